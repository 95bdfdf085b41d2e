"""Prefect flows: wiring only. Each task is a short call into the ``forecasting`` library."""
