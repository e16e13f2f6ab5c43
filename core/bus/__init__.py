"""NATS plumbing: connections, contexts, micro services, the durable pull worker, notifications."""
