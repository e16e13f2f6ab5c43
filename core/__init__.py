"""Core: models, config, bus, store, inventory, API, conductor and CLI."""
