"""Benchmarks: scripts printing JSON lines, run as `python -m bench.NAME` (see `make bench`)."""
