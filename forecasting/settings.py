"""Settings, read once at the edge (CLI or flow entry) into one frozen object.

Sources, lowest to highest precedence: built-in defaults, an optional ``forecasting.toml``
(path from ``FORECASTING_CONFIG``, else ``./forecasting.toml``), then environment variables.
The tushare token comes only from ``TUSHARE_TOKEN`` and is never printed: its ``repr`` is masked.
Values are parsed here, once, into the types the fields declare (a date is a ``datetime.date``,
a choice is one of its ``Literal`` values), so a bad value fails at load time naming the file
key or environment variable, before any command starts work.
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from forecasting.clock import parse_date
from forecasting.errors import ForecastingError, InputError

DEFAULT_DATABASE_URL = "sqlite:///forecasting.db"

# The choices a setting can take; the code that acts on them branches on these same names.
SourceName = Literal["tushare", "csv", "demo"]
CheckpointStore = Literal["database", "files"]
TaskRunnerName = Literal["thread", "dask"]
Cell = Literal["lstm", "gru", "rnn"]
Target = Literal["log_return", "minmax"]
Loss = Literal["quantile", "mse"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class SettingsError(ForecastingError, ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""

    exit_code = 2


@dataclass(frozen=True)
class Secret:
    """A string that never shows itself in logs, reprs or tracebacks."""

    value: str = field(repr=False)

    def __repr__(self) -> str:
        return "Secret('********')" if self.value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self.value)


@dataclass(frozen=True)
class ModelSettings:
    """Model hyperparameters. :class:`forecasting.model.lstm.ModelConfig` extends this with
    validation and serialization; the fields are defined here once."""

    input_len: int = 60
    horizon: int = 10
    cell: Cell = "lstm"
    # Sized for CPUs: daily returns carry little signal, and a 1x32 LSTM trains ~12x faster
    # than 2x64 with the same validation ratio on the shared data.
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    target: Target = "log_return"
    loss: Loss = "quantile"
    lr: float = 1e-3
    batch_size: int = 512
    max_epochs: int = 10
    patience: int = 3
    val_days: int = 60
    history_days: int = 750
    seed: int = 0
    finetune_lr: float = 3e-4
    finetune_epochs: int = 5
    finetune_days: int = 250
    # Training windows per epoch, stratified by ticker (forecasting.model.sampling); 0: all.
    # Over a whole market it keeps an epoch's time independent of the number of tickers.
    windows_per_epoch: int = 0
    interval: float = 0.8
    per_ticker: bool = False
    device: str = "auto"
    shrink: bool = True


@dataclass(frozen=True)
class PolicySettings:
    """Drift-check and retrain policy."""

    check_window: int = 20
    min_check_days: int = 5  # fewer unseen days than this: too little evidence, keep the model
    # Check RMSE over the model's own validation RMSE, both in the same normalized units (each
    # h-step error divided by the series' training-span daily std and by sqrt(h)): 1.5 means
    # "errors half as large again as when it was validated". It catches volatility outgrowing
    # the training span, which the ratio to naive cannot see, and it re-bases itself at every
    # refit, so a lasting regime change triggers one refit rather than one a day.
    degradation_threshold: float | None = 1.5
    # The same check RMSE against a fixed level in those units; None disables it.
    abs_threshold: float | None = None
    rel_threshold: float = 1.05  # ratio to naive persistence on the same windows
    # A safety net for slow drift the check misses, not the main trigger: retrain from scratch
    # once this many calendar days have passed since the last refit (or rejected refit).
    max_age_days: int = 180
    min_history: int = 80  # trading days a ticker needs to be forecast
    stale_days: int = 10  # calendar days without a price before a ticker is skipped


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    tushare_token: Secret = field(default_factory=lambda: Secret(""))
    tickers: tuple[str, ...] = ()
    source: SourceName = "demo"
    source_path: str | None = None  # file or folder for source = "csv"
    history_start: dt.date = dt.date(2015, 1, 1)  # first day ingested for a ticker without history
    exchange: str = "XSHG"
    model_dir: str = "models"
    checkpoint_store: CheckpointStore = "database"
    task_runner: TaskRunnerName = "thread"
    dask_address: str | None = None
    report_dir: str = "reports"
    model: ModelSettings = field(default_factory=ModelSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


_ENV = {
    "FORECASTING_DATABASE_URL": "database_url",
    "FORECASTING_TICKERS": "tickers",
    "FORECASTING_SOURCE": "source",
    "FORECASTING_SOURCE_PATH": "source_path",
    "FORECASTING_HISTORY_START": "history_start",
    "FORECASTING_MODEL_DIR": "model_dir",
    "FORECASTING_CHECKPOINT_STORE": "checkpoint_store",
    "FORECASTING_TASK_RUNNER": "task_runner",
    "FORECASTING_DASK_ADDRESS": "dask_address",
    "FORECASTING_REPORT_DIR": "report_dir",
}


def _coerce(cls: type, name: str, raw: Any, where: str) -> Any:
    """``raw`` (a TOML value or an environment string) as the type of ``cls.name``."""
    kind = get_type_hints(cls)[name]
    args = get_args(kind)
    if get_origin(kind) in (Union, types.UnionType) and type(None) in args:
        if raw is None:
            return None
        (kind,) = (a for a in args if a is not type(None))
        args = get_args(kind)

    def bad(expected: str) -> SettingsError:
        return SettingsError(f"{where}: {name}={raw!r} is not {expected}")

    if get_origin(kind) is Literal:
        value = str(raw).strip().lower()
        if value not in args:
            raise bad(f"one of {', '.join(args)}")
        return value
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).strip().lower() not in _TRUE + _FALSE:
            raise bad(f"true or false ({', '.join(_TRUE)} / {', '.join(_FALSE)})")
        return str(raw).strip().lower() in _TRUE
    if kind is dt.date:
        if isinstance(raw, dt.datetime):
            return raw.date()
        if isinstance(raw, dt.date):
            return raw
        try:
            return parse_date(str(raw))
        except InputError:
            raise bad("a date; write it as YYYY-MM-DD (or YYYYMMDD)") from None
    if get_origin(kind) is tuple:
        items = raw.split(",") if isinstance(raw, str) else raw
        return tuple(str(t).strip().upper() for t in items if str(t).strip())
    try:
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            return float(raw)
    except (TypeError, ValueError):
        raise bad(f"a valid {kind.__name__}") from None
    return str(raw)


def _section(
    cls: type, data: Mapping[str, Any], env: Mapping[str, str], prefix: str, where: str
) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise SettingsError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    values = {k: _coerce(cls, k, v, where) for k, v in data.items()}
    for name in known:
        key = f"{prefix}{name.upper()}"
        if key in env:
            values[name] = _coerce(cls, name, env[key], f"environment variable {key}")
    return cls(**values)


def load_settings(
    env: Mapping[str, str] | None = None, config_path: str | Path | None = None
) -> Settings:
    """Read settings from defaults, ``forecasting.toml`` and the environment.

    Model settings can be overridden with ``FORECASTING_MODEL_<NAME>`` and policy settings with
    ``FORECASTING_POLICY_<NAME>``, e.g. ``FORECASTING_MODEL_MAX_EPOCHS=5``.
    """
    env = dict(os.environ if env is None else env)
    path = Path(config_path or env.get("FORECASTING_CONFIG") or "forecasting.toml")
    data: dict[str, Any] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{path}: not valid TOML: {exc}") from exc
    elif config_path is not None or "FORECASTING_CONFIG" in env:
        raise SettingsError(f"config file {path} does not exist")
    if "tushare_token" in data or "TUSHARE_TOKEN" in data:
        raise SettingsError(
            f"{path}: do not put the tushare token in a config file; set TUSHARE_TOKEN instead"
        )
    model_data = data.pop("model", {})
    policy_data = data.pop("policy", {})
    top_fields = {f.name for f in fields(Settings)} - {"model", "policy", "tushare_token"}
    unknown = set(data) - top_fields
    if unknown:
        raise SettingsError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(top_fields)}")
    values: dict[str, Any] = {k: _coerce(Settings, k, v, str(path)) for k, v in data.items()}
    for key, name in _ENV.items():
        if key in env and env[key] != "":
            values[name] = _coerce(Settings, name, env[key], f"environment variable {key}")
    values["model"] = _section(
        ModelSettings, model_data, env, "FORECASTING_MODEL_", f"{path} [model]"
    )
    values["policy"] = _section(
        PolicySettings, policy_data, env, "FORECASTING_POLICY_", f"{path} [policy]"
    )
    values["tushare_token"] = Secret(env.get("TUSHARE_TOKEN", "").strip())
    return Settings(**values)
