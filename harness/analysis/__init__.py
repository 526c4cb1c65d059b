"""harness.analysis package."""
