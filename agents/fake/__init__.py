"""The fake driver: in-memory hypervisor for tests and scale simulation."""
