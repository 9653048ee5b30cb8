"""Benchmarks of the gateway against baselines measured in the same run (issue 6)."""
