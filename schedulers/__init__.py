"""The scheduler service and scheduler implementations."""
