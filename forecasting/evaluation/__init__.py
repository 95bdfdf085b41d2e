"""Forecast accuracy and the HTML report."""
