"""Operator tools that are not nightly stages: the run report, the input tables (synthetic or MovieLens),
the synthetic data generator."""
