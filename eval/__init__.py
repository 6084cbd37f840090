"""Metrics (pure functions on arrays/tensors) and benchmarks reached by registry name."""
