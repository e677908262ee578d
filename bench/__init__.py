"""Benchmarks: machine-readable results, compared with a baseline measured in the same run."""
