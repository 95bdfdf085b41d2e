"""The choices a setting can take, as ``Literal`` types; the code that acts on them branches on
these same names.

Their own module, importing nothing, so that the command line can offer them as option choices
without loading the settings machinery (``forecasting --help`` stays quick);
:mod:`forecasting.settings` re-exports them.
"""

from __future__ import annotations

from typing import Literal

SourceName = Literal["tushare", "csv", "demo"]
CheckpointStore = Literal["database", "files"]
TaskRunnerName = Literal["thread", "dask"]
Cell = Literal["lstm", "gru", "rnn"]
Target = Literal["log_return", "minmax"]
Loss = Literal["quantile", "mse"]
# Model inputs per day (forecasting.model.features); a model's set is saved in its config.
Feature = Literal["return", "abs_return", "gap", "limit_up", "limit_down", "range", "volume"]
