"""The math of compression: pure functions on tensors, no I/O, no hooks, no CLI."""
