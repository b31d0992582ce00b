"""Benchmarks of the wallet service: `python -m bench` (load scenarios) and `python -m bench.generate`."""
