"""harness.train package."""
