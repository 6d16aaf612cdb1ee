"""Model resolution and per-architecture adapters."""
