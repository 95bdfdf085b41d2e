"""Benchmarks of the forecasting project (run with ``python -m benchmarks.<name>``)."""
