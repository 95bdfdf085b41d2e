"""forecasting: a scheduled pipeline that forecasts daily closing prices.

The library never imports Prefect; ``forecasting_flows/`` wires these functions into flows.
"""

from __future__ import annotations

__version__ = "0.1.0"
