"""The metadata service guests read, its content, and the config drive."""
