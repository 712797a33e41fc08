"""Shared test helpers: signing, event builders, databases, servers."""
