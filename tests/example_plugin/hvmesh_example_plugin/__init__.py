"""An example hvmesh plugin package; the hooks are in `hvmesh_example_plugin.plugin`."""
