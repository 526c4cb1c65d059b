"""harness.eval package."""
