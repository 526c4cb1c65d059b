"""harness.launch package."""
