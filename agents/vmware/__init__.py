"""The VMware driver: a vCenter cluster (or a standalone ESXi host) through pyvmomi."""
