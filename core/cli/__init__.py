"""The `hvmesh` command: one module per command group, output formats."""
