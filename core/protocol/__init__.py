"""The wire protocol: records, messages, states and errors; imports nothing else from hvmesh."""
