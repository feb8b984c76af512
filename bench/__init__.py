"""Benchmarks for kosmos-demo: ``python -m bench --help``. See BENCHMARKS.md for results."""
