"""Benchmarks of speed and memory, apart from the scripts users run (`scripts/`).

Run one from the repository root as a module: `python -m benchmarks.decode --help`.
"""
