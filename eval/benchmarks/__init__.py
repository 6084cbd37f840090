"""Benchmarks run by ``radfm bench NAME``; each module exposes ``run(args) -> BenchResult``."""
