"""Authentication and authorization policies."""
