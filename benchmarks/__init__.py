"""Benchmarks: each writes its figures to a JSON file and docs/benchmarks.md."""
