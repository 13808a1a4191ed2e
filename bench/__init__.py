"""Benchmarks: the training-speed suite (`python -m bench`, docs/benchmarks.md) and the ASHA and
serving benchmarks it also runs (bench_asha.py, bench_serve.py, usable on their own)."""
