"""harness.data package."""
