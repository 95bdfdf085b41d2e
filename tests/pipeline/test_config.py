"""A run's tasks get a narrow configuration: no token travels with them."""

from __future__ import annotations

import pickle

from forecasting.pipeline.config import RunConfig
from forecasting.settings import Secret, Settings


def test_the_run_configuration_carries_what_a_run_reads_and_no_token() -> None:
    """What the flows pickle into every task run (and to Dask workers) holds the model, policy
    and storage settings of the run, and neither the token nor the price source."""
    s = Settings(tushare_token=Secret("tok-3141592653"), tickers=("600519.SH",))
    cfg = RunConfig.of(s)

    assert (cfg.model, cfg.policy, cfg.tickers) == (s.model, s.policy, ("600519.SH",))
    assert b"tok-3141592653" not in pickle.dumps(cfg)
    assert not hasattr(cfg, "tushare_token") and not hasattr(cfg, "source")


def test_states_are_typed_and_read_back_as_such() -> None:
    """Run, summary and version states are enums whose values are what the database stores."""
    from forecasting.model.registry import STATUSES, VersionStatus
    from forecasting.pipeline.runs import RunStatus
    from forecasting.pipeline.summary import SummaryStatus

    assert [s.value for s in RunStatus] == ["running", "success", "partial", "failed", "abandoned"]
    assert VersionStatus("discarded") is VersionStatus.DISCARDED and "active" in STATUSES
    assert SummaryStatus.NOT_A_TRADING_DAY == "not-a-trading-day"
