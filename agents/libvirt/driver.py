"""The libvirt compute driver (unfinished: being written)."""
