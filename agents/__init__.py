"""The agent runtime shared by every hypervisor driver."""
