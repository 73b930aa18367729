"""Benchmarks of the pipeline's stages, runnable as ``python -m support.benchmarks.<name>``."""
