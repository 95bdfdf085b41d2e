"""Settings, read once at the edge (CLI or flow entry) into one frozen object.

Sources, lowest to highest precedence: built-in defaults, an optional ``forecasting.toml``
(path from ``FORECASTING_CONFIG``, else ``./forecasting.toml``), then environment variables.
The tushare token comes only from ``TUSHARE_TOKEN`` and is never printed: its ``repr`` is masked.

**Adding a setting** is one line: a typed field with its default on :class:`Settings` (top
level), :class:`ModelSettings` (``[model]``), :class:`PolicySettings` (``[policy]``) or
:class:`IngestSettings` (``[ingest]``). Its TOML key is the field name; its environment variable
is ``FORECASTING_<NAME>``, or ``FORECASTING_<SECTION>_<NAME>`` for the sections; ``forecasting
config`` lists it; an unknown name close to it is refused with it as the suggestion. A choice is
an ``Annotated[Literal[...], CHOICE]``, a date :data:`Day`; a constraint is ``annotated_types``
metadata (``Annotated[int, Ge(1)]``). A variable that the project reads outside this object goes
in :data:`OTHER_VARIABLES`.

The values stay plain frozen dataclasses (the model's configuration extends
:class:`ModelSettings`, and steps pickle them to workers); pydantic-settings reads the sources,
merges them, and pydantic parses every value once into the type its field declares (a date is a
``datetime.date``, a choice one of its ``Literal`` values, a switch a strict boolean), so a bad
value fails at load time, in one line naming the file key or environment variable, before any
command starts work.
"""

from __future__ import annotations

import contextvars
import dataclasses
import datetime as dt
import difflib
import functools
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Annotated, Any, get_type_hints

from annotated_types import Ge, Gt, Lt
from pydantic import BeforeValidator, ValidationError

from forecasting.choices import Cell as Cell
from forecasting.choices import CheckpointStore as CheckpointStore
from forecasting.choices import Feature as Feature
from forecasting.choices import Loss as Loss
from forecasting.choices import SourceName as SourceName
from forecasting.choices import Target as Target
from forecasting.choices import TaskRunnerName as TaskRunnerName
from forecasting.clock import parse_date
from forecasting.errors import ForecastingError, InputError

DEFAULT_DATABASE_URL = "sqlite:///forecasting.db"
DEFAULT_CONFIG_FILE = "forecasting.toml"


class SettingsError(ForecastingError, ValueError):
    """A configuration value is missing or malformed; the message says which and how to fix it."""


def _choice(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _day(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return parse_date(str(value))
    except InputError:
        raise ValueError("is not a date; write it as YYYY-MM-DD (or YYYYMMDD)") from None


def _tickers(value: Any) -> Any:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        return value
    return tuple(str(t).strip().upper() for t in items if str(t).strip())


#: Marks a ``Literal`` field whose value is matched without regard to case or spaces.
CHOICE = BeforeValidator(_choice)
#: A date, written ``YYYY-MM-DD`` or ``YYYYMMDD`` (or a TOML date).
Day = Annotated[dt.date, BeforeValidator(_day)]


def _names(value: Any) -> Any:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, Iterable):
        return value
    return tuple(str(t).strip().lower() for t in items if str(t).strip())


#: Tickers, a TOML list or a comma-separated string, upper-cased.
Tickers = Annotated[tuple[str, ...], BeforeValidator(_tickers)]
#: Model input names, a TOML list or a comma-separated string, lower-cased.
Features = Annotated[tuple[Feature, ...], BeforeValidator(_names)]
Positive = Annotated[int, Ge(1)]
Count = Annotated[int, Ge(0)]
Fraction = Annotated[float, Ge(0.0), Lt(1.0)]


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

    input_len: Positive = 60
    horizon: Positive = 10
    cell: Annotated[Cell, CHOICE] = "lstm"
    # Sized for CPUs: daily returns carry little signal, and a 1x32 LSTM trains ~12x faster
    # than 2x64 with the same validation ratio on the shared data.
    hidden_size: Positive = 32
    num_layers: Positive = 1
    dropout: Fraction = 0.0
    target: Annotated[Target, CHOICE] = "log_return"
    loss: Annotated[Loss, CHOICE] = "quantile"
    lr: Annotated[float, Gt(0.0)] = 1e-3
    batch_size: Positive = 512
    max_epochs: Count = 10
    patience: Count = 3
    val_days: Count = 60
    history_days: Count = 750
    seed: int = 0
    finetune_lr: Annotated[float, Gt(0.0)] = 3e-4
    finetune_epochs: Count = 5
    finetune_days: Count = 250
    # Training windows per epoch, stratified by ticker (forecasting.model.sampling); 0: all.
    # Over a whole market it keeps an epoch's time independent of the number of tickers.
    windows_per_epoch: Count = 0
    interval: Annotated[float, Gt(0.0), Lt(1.0)] = 0.8
    per_ticker: bool = False
    device: str = "auto"
    shrink: bool = True
    # The inputs per day, "return" first (forecasting.model.features).
    features: Features = (
        "return",
        "abs_return",
        "gap",
        "limit_up",
        "limit_down",
        "range",
        "volume",
    )


@dataclass(frozen=True)
class PolicySettings:
    """Drift-check and retrain policy."""

    check_window: Positive = 20
    min_check_days: Count = 5  # fewer unseen days than this: too little evidence, keep the model
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
    max_age_days: Count = 180
    min_history: Count = 80  # trading days a ticker needs to be forecast
    stale_days: Count = 10  # calendar days without a price before a ticker is skipped
    # A `running` run of another lineage with no heartbeat for this long is marked `abandoned`
    # by the next run (a run of the same lineage is, at once: it holds the lineage's lock).
    abandon_after_s: Annotated[float, Gt(0.0)] = 600.0


@dataclass(frozen=True)
class IngestSettings:
    """What the ingest may spend on the network, what it re-reads, and what it calls
    implausible (``[ingest]``, ``FORECASTING_INGEST_<NAME>``)."""

    tushare_timeout: Annotated[float, Gt(0.0)] = 15.0  # seconds per HTTP request
    tushare_retries: Count = 3  # after the first attempt: rate limits, network errors, 5xx
    tushare_backoff: Annotated[float, Ge(0.0)] = 2.0  # first retry delay, doubling each time
    tushare_url: str | None = None  # the API root, for a mirror or proxy (default tushare's)
    # The account's rate limit: every request waits for a token of a bucket filled this fast.
    tushare_calls_per_minute: Annotated[float, Gt(0.0)] = 500.0
    # The whole run stops here, keeps what landed, and fails; None: no deadline.
    deadline_s: Annotated[float, Gt(0.0)] | None = 3600.0
    # Calendar days before a ticker's last stored bar that a network ingest fetches again:
    # vendors revise recent bars, and a revision is applied and recorded in `revisions`.
    reread_days: Count = 10
    # Indices and markets without exchange price limits: the largest one-day move, as a
    # fraction (1.0: a close above 2x or below 1/2 of the previous one is implausible).
    max_move: Annotated[float, Gt(0.0)] = 1.0
    # A `running` ingest with no heartbeat for this long is closed as `abandoned`.
    abandon_after_s: Annotated[float, Gt(0.0)] = 1800.0


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    tushare_token: Secret = field(default_factory=lambda: Secret(""))
    tickers: Tickers = ()
    # Which tickers, when not the list above: "all" (every listed A-share) or "index:000300.SH"
    # (an index's members on each day); see forecasting.data.universe.
    universe: str = ""
    # No default: a run never ingests from a source nobody chose (the demo market least of
    # all); `forecasting demo` or an explicit --source demo reach the demo.
    source: Annotated[SourceName | None, CHOICE] = None
    source_path: str | None = None  # file or folder for source = "csv"
    history_start: Day = dt.date(2015, 1, 1)  # first day ingested for a ticker without history
    exchange: str = "XSHG"
    model_dir: str = "models"
    checkpoint_store: Annotated[CheckpointStore, CHOICE] = "database"
    task_runner: Annotated[TaskRunnerName, CHOICE] = "thread"
    dask_address: str | None = None
    report_dir: str = "reports"
    model: ModelSettings = field(default_factory=ModelSettings)
    policy: PolicySettings = field(default_factory=PolicySettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


ENV_PREFIX = "FORECASTING_"
TOKEN_VARIABLE = "TUSHARE_TOKEN"
#: The sections of :class:`Settings`: a TOML table and an environment prefix each.
SECTIONS: dict[str, type[Any]] = {
    "model": ModelSettings,
    "policy": PolicySettings,
    "ingest": IngestSettings,
}
#: ``FORECASTING_*`` variables read outside the settings object, so not unknown.
OTHER_VARIABLES = {
    "FORECASTING_CONFIG": "the config file (default ./forecasting.toml)",
    "FORECASTING_TUSHARE_SECRET_BLOCK": "the Prefect Secret block holding the tushare token",
    "FORECASTING_SHARED_DATA": "the test suite's data folder",
    "FORECASTING_SKIP_POSTGRES": "the test suite: skip the Postgres tests",
    "FORECASTING_TEST_PG_URL": "the test suite's Postgres server",
}
#: Settings that never come from a file or a ``FORECASTING_*`` variable.
_SECRET_FIELDS = ("tushare_token",)


def variables() -> dict[str, str]:
    """Every setting's environment variable, keyed by its dotted name (``model.max_epochs``)."""
    out = {
        f.name: f"{ENV_PREFIX}{f.name.upper()}"
        for f in fields(Settings)
        if f.name not in SECTIONS and f.name not in _SECRET_FIELDS
    }
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            out[f"{section}.{f.name}"] = f"{ENV_PREFIX}{section.upper()}_{f.name.upper()}"
    return out


@dataclass(frozen=True)
class LoadedSettings:
    """Settings and where each value came from: ``default``, the config file's path, or the
    environment variable's name."""

    settings: Settings
    origins: Mapping[str, str]

    def rows(self) -> list[dict[str, Any]]:
        """One row per setting (``setting``, ``value``, ``origin``, ``variable``), token masked."""
        names = variables()
        out = [
            {
                "setting": "tushare_token",
                "value": "********" if self.settings.tushare_token else "",
                "origin": self.origins.get("tushare_token", "default"),
                "variable": TOKEN_VARIABLE,
            }
        ]
        for name, variable in names.items():
            section, _, key = name.rpartition(".")
            value = getattr(getattr(self.settings, section) if section else self.settings, key)
            if isinstance(value, tuple):
                value = ",".join(value)
            out.append(
                {
                    "setting": name,
                    "value": "" if value is None else str(value),
                    "origin": self.origins.get(name, "default"),
                    "variable": variable,
                }
            )
        return out


def load_settings(
    env: Mapping[str, str] | None = None, config_path: str | Path | None = None
) -> Settings:
    """Read settings from defaults, ``forecasting.toml`` and the environment.

    Model settings can be overridden with ``FORECASTING_MODEL_<NAME>`` and policy settings with
    ``FORECASTING_POLICY_<NAME>``, e.g. ``FORECASTING_MODEL_MAX_EPOCHS=5``.

    Raises:
        SettingsError: one line naming the key or variable and what it should be.
    """
    return load_settings_and_origins(env, config_path).settings


def config_file(
    env: Mapping[str, str] | None = None, config_path: str | Path | None = None
) -> Path:
    """The config file settings are read from: ``config_path``, ``FORECASTING_CONFIG``, or
    ``./forecasting.toml`` (which may not exist: then the defaults and the environment)."""
    env = os.environ if env is None else env
    return Path(config_path or env.get("FORECASTING_CONFIG") or DEFAULT_CONFIG_FILE)


def load_settings_and_origins(
    env: Mapping[str, str] | None = None, config_path: str | Path | None = None
) -> LoadedSettings:
    """:func:`load_settings`, and where each value came from (for ``forecasting config``)."""
    env = dict(os.environ if env is None else env)
    path = config_file(env, config_path)
    if not path.exists() and (config_path is not None or "FORECASTING_CONFIG" in env):
        raise SettingsError(
            f"config file {path} does not exist; create it or unset FORECASTING_CONFIG"
        )
    file_values, file_origins = _from_file(path) if path.exists() else ({}, {})
    env_values, env_origins = _from_environment(env)
    origins = {**file_origins, **env_origins}
    loader = _loader_class()
    try:
        loaded = loader(_file=file_values, _env=env_values)
    except ValidationError as exc:
        raise SettingsError(_explain(exc, origins, path)) from None
    settings = Settings(**{f.name: getattr(loaded, f.name) for f in fields(Settings)})
    return LoadedSettings(settings, origins)


def _close(name: str, known: Iterable[str], prefix: str = "") -> str:
    """``; did you mean A or B?`` for the known names close to ``name``, or nothing."""
    near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(prefix + n for n in near)}?" if near else ""


def _from_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML: {exc}") from None
    if "tushare_token" in data or TOKEN_VARIABLE in data:
        raise SettingsError(
            f"{path}: do not put the tushare token in a config file; set {TOKEN_VARIABLE} instead"
        )
    top = {f.name for f in fields(Settings)} - set(_SECRET_FIELDS)
    origins: dict[str, str] = {}
    for key, value in data.items():
        if key not in top:
            raise SettingsError(
                f"{path}: {key!r} is not a setting{_close(key, top)} "
                "(`forecasting config` lists them)"
            )
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise SettingsError(f"{path}: {key} must be a table: [{key}]")
            known = {f.name for f in fields(SECTIONS[key])}
            for sub in value:
                if sub not in known:
                    raise SettingsError(
                        f"{path} [{key}]: {sub!r} is not a setting{_close(sub, known)} "
                        "(`forecasting config` lists them)"
                    )
                origins[f"{key}.{sub}"] = str(path)
        else:
            origins[key] = str(path)
    return data, origins


def _from_environment(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    names = {v: k for k, v in variables().items()}
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for variable, raw in env.items():
        if not variable.startswith(ENV_PREFIX) or variable in OTHER_VARIABLES:
            continue
        name = names.get(variable)
        if name is None:
            known = [v.removeprefix(ENV_PREFIX) for v in [*names, *OTHER_VARIABLES]]
            near = _close(variable.removeprefix(ENV_PREFIX), known, prefix=ENV_PREFIX)
            raise SettingsError(
                f"environment variable {variable} is not a setting{near} "
                "(`forecasting config` lists them)"
            )
        if not raw.strip():
            raise SettingsError(
                f"environment variable {variable} is empty; set a value, or unset it for the "
                f"default ({_default(name)!r})"
            )
        section, _, key = name.rpartition(".")
        (values.setdefault(section, {}) if section else values)[key] = raw
        origins[name] = variable
    token = env.get(TOKEN_VARIABLE, "").strip()
    values["tushare_token"] = Secret(token)
    if token:
        origins["tushare_token"] = TOKEN_VARIABLE
    return values, origins


def _default(name: str) -> Any:
    section, _, key = name.rpartition(".")
    owner = SECTIONS[section] if section else Settings
    value = getattr(owner(), key)
    return ",".join(value) if isinstance(value, tuple) else value


_SOURCES: contextvars.ContextVar[tuple[dict[str, Any], dict[str, Any]]] = contextvars.ContextVar(
    "settings_sources"
)


@functools.cache
def _loader_class() -> type[Any]:
    """A pydantic-settings class with :class:`Settings`' fields, whose sources are the
    environment over the config file over the defaults."""
    from pydantic import Field, create_model
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

    class _Values(PydanticBaseSettingsSource):
        """Values already read (and checked for unknown names) from one source."""

        def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
            super().__init__(settings_cls)
            self.values = values

        def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
            return self.values.get(field_name), field_name, False

        def __call__(self) -> dict[str, Any]:
            return self.values

    class _Base(BaseSettings):
        model_config = SettingsConfigDict(extra="forbid", frozen=True)

        def __init__(self, *, _file: dict[str, Any], _env: dict[str, Any]) -> None:
            # The sources are chosen by a class method; a context variable hands them this
            # call's values without sharing them between threads loading settings at once.
            token = _SOURCES.set((_file, _env))
            try:
                super().__init__()
            finally:
                _SOURCES.reset(token)

        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], *args: Any, **kwargs: Any
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            file, env = _SOURCES.get()
            return (_Values(settings_cls, env), _Values(settings_cls, file))

    hints = get_type_hints(Settings, include_extras=True)

    def spec(f: dataclasses.Field[Any]) -> Any:
        if f.default_factory is not dataclasses.MISSING:
            return Field(default_factory=f.default_factory)
        return f.default

    specs: dict[str, Any] = {f.name: (hints[f.name], spec(f)) for f in fields(Settings)}
    return create_model("SettingsSources", __base__=_Base, **specs)


#: What pydantic's error types mean, said the way this project's messages say it.
_EXPECTED = {
    "bool_parsing": "is not true or false (true/false, yes/no, on/off, 1/0)",
    "bool_type": "is not true or false (true/false, yes/no, on/off, 1/0)",
    "int_parsing": "is not a valid int",
    "int_from_float": "is not a valid int",
    "int_type": "is not a valid int",
    "float_parsing": "is not a valid float",
    "float_type": "is not a valid float",
}


def _explain(exc: ValidationError, origins: Mapping[str, str], path: Path) -> str:
    """The first error, in one line: where the value came from, the key, the value, the fix."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not isinstance(p, int)]
    name = ".".join(loc[:2])
    origin = origins.get(name)
    if origin is None or origin == str(path):
        where = f"{path} [{loc[0]}]" if len(loc) > 1 else str(path)
    else:
        where = f"environment variable {origin}"
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "literal_error":
        choices = str(ctx.get("expected", "")).replace("'", "").replace(" or ", ", ")
        expected = f"is not one of {choices}"
    elif kind in _EXPECTED:
        expected = _EXPECTED[kind]
    elif kind == "value_error":
        expected = str(ctx.get("error", err["msg"]))
    else:
        msg = err["msg"]
        expected = "is not valid: " + msg[:1].lower() + msg[1:]
    return f"{where}: {loc[-1]}={err['input']!r} {expected}"
