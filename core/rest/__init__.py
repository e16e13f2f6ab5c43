"""The OpenStack REST front door (`hvmesh rest`): Keystone v3 tokens and compute v2.1 on NATS."""
