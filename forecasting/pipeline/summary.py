"""The summary of one run: what the CLI prints and the flow publishes as its artifact."""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from forecasting.model.metrics import ratio_to_naive
from forecasting.pipeline.forecast_store import (
    WriteResult,
)
from forecasting.pipeline.refit import ScopeOutcome

log = logging.getLogger(__name__)


class SummaryStatus(StrEnum):
    """How a run ended, as the CLI and the flow's artifact report it."""

    SUCCESS = "success"
    PARTIAL = "partial"  # published, with tickers skipped for their inputs (run_skips)
    ALREADY_COMPLETE = "already-complete"  # the day was done in this lineage; nothing written
    NO_DATA = "no-data"  # no prices to run on
    NOT_A_TRADING_DAY = "not-a-trading-day"  # no as-of day given and the exchange is closed
    FAILED = "failed"


@dataclass
class RunSummary:
    run_id: str | None
    as_of: dt.date | None
    lineage: str
    status: SummaryStatus
    outcomes: list[ScopeOutcome] = field(default_factory=list)
    n_forecast_rows: int = 0
    tickers_forecast: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    written: WriteResult | None = None
    next_day: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    @property
    def decision(self) -> str | None:
        order = {"keep": 0, "finetune": 1, "retrain": 2}
        acts = [o.action for o in self.outcomes]
        return max(acts, key=lambda a: order.get(a, 0)) if acts else None

    def markdown(self) -> str:
        """The run summary that the flow publishes as a Prefect markdown artifact."""
        lines = [f"# Daily forecast run — as of {self.as_of}", ""]
        lines.append(
            f"- run id: `{self.run_id}`  \n- lineage: `{self.lineage}`  \n- status: **{self.status}**"
        )
        if self.message:
            lines += ["", self.message]
        if self.outcomes:
            lines += [
                "",
                "## Model check",
                "",
                "| scope | decision | RMSE | naive RMSE | ratio | threshold | new version | promoted | reason |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for o in self.outcomes:
                ratio = ratio_to_naive(o.rmse, o.naive_rmse)
                lines.append(
                    f"| {o.scope} | {o.action} | {_fmt(o.rmse)} | {_fmt(o.naive_rmse)} | {_fmt(ratio)} | "
                    f"{_fmt(o.threshold)} | {o.new_version_id or ''} | {'' if o.promoted is None else o.promoted} | {o.reason} |"
                )
        lines += [
            "",
            "## Forecasts",
            "",
            f"{len(self.tickers_forecast)} tickers forecast, {self.n_forecast_rows} rows.",
        ]
        if self.written:
            lines.append(
                f"Written: {self.written.inserted} new, {self.written.replaced} replaced, {self.written.unchanged} unchanged."
            )
        if self.tickers_forecast:
            lines.append("")
            lines.append("Forecast: " + ", ".join(self.tickers_forecast))
        if self.skipped:
            lines += ["", f"## Skipped ({len(self.skipped)})", ""]
            # Each reason names its ticker already ("600519.SH: no prices on or before ...").
            lines += [
                f"- **{t}**: {why.removeprefix(f'{t}: ')}"
                for t, why in sorted(self.skipped.items())
            ]
        return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
