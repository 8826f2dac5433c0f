"""Internals shared by the public layer, the core and the adapters."""
