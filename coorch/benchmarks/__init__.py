"""Benchmarks behind ``coorch bench``: each prints figures; docs/benchmarks.md keeps them."""
