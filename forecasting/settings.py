"""Settings, read once at the edge (CLI or flow entry) into one frozen object.

Sources, lowest to highest precedence: built-in defaults, an optional ``forecasting.toml``
(path from ``FORECASTING_CONFIG``, else ``./forecasting.toml``), then environment variables.
The tushare token comes only from ``TUSHARE_TOKEN`` and is never printed: its ``repr`` is masked.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_DATABASE_URL = "sqlite:///forecasting.data.db"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


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
    cell: str = "lstm"
    # Sized for CPUs: daily returns carry little signal, and a 1x32 LSTM trains ~12x faster
    # than 2x64 with the same validation ratio on the shared data.
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    target: str = "log_return"
    loss: str = "quantile"
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
    source: str = "demo"
    source_path: str | None = None  # file or folder for source = "csv"
    history_start: str = "2015-01-01"
    exchange: str = "XSHG"
    model_dir: str = "models"
    checkpoint_store: str = "database"  # database | files
    task_runner: str = "thread"  # thread | dask
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
    target = {f.name: f for f in fields(cls)}[name]
    kind = str(target.type)
    try:
        if raw is None:
            return None
        if "bool" in kind:
            if isinstance(raw, str):
                return raw.strip().lower() in ("1", "true", "yes", "on")
            return bool(raw)
        if kind.startswith("int"):
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "tuple" in kind:
            if isinstance(raw, str):
                return tuple(t.strip().upper() for t in raw.split(",") if t.strip())
            return tuple(str(t).upper() for t in raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{where}: {name}={raw!r} is not a valid {kind}") from exc


def _section(cls: type, data: Mapping[str, Any], env: Mapping[str, str], prefix: str, where: str):
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
