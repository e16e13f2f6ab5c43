"""Running hvmesh: `hvmesh up`, the launcher, nats-server, audit and benchmarks."""
