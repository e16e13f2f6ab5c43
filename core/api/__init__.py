"""The NATS API service, hvmesh-api: one module per group of resources."""
