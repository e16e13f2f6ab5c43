"""Roles and policy: rules with defaults in code, a policy file overriding them, users' roles."""
