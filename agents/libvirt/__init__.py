"""The libvirt driver: guests under libvirtd (KVM, or QEMU's software emulation)."""
