"""COOKIE reproducibility harness: shared data, training, evaluation, launch and analysis."""
