"""Compute drivers against their real peers, for the driver conformance suite."""
