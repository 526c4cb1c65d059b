"""harness.models package."""
