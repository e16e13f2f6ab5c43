"""State on JetStream: the KV store with compare-and-set, the inventory index, claims, IPAM, image data, the action log."""
