"""Settings are read once from defaults, forecasting.toml and the environment."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from forecasting.settings import (
    DEFAULT_DATABASE_URL,
    OTHER_VARIABLES,
    SettingsError,
    load_settings,
    load_settings_and_origins,
    variables,
)


def test_defaults_need_nothing(tmp_path: Path) -> None:
    """With no file and no environment, the embedded SQLite default is used: the file the
    README names and .gitignore ignores, forecasting.db in the working directory."""
    s = load_settings(env={"FORECASTING_CONFIG": str(_write(tmp_path, ""))})
    assert s.database_url == DEFAULT_DATABASE_URL == "sqlite:///forecasting.db"
    assert s.model.target == "log_return"
    assert not s.tushare_token


def _write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "forecasting.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    """The TOML file sets the universe and model; environment variables win over it."""
    path = _write(
        tmp_path,
        'tickers = ["600519.sh", "000300.SH"]\n[model]\nhidden_size = 16\n[policy]\nrel_threshold = 1.2\n',
    )
    s = load_settings(
        env={
            "FORECASTING_MODEL_HIDDEN_SIZE": "24",
            "FORECASTING_DATABASE_URL": "postgresql://u@h/db",
            "FORECASTING_POLICY_ABS_THRESHOLD": "2.5",
        },
        config_path=path,
    )
    assert s.tickers == ("600519.SH", "000300.SH")
    assert s.model.hidden_size == 24
    assert s.policy.rel_threshold == 1.2
    assert s.policy.abs_threshold == 2.5
    assert s.database_url == "postgresql://u@h/db"


def test_the_token_never_shows(tmp_path: Path) -> None:
    """The tushare token is read from TUSHARE_TOKEN and masked in every repr."""
    s = load_settings(
        env={"TUSHARE_TOKEN": "s3cr3t-token-value", "FORECASTING_CONFIG": str(_write(tmp_path, ""))}
    )
    assert s.tushare_token.value == "s3cr3t-token-value"
    assert "s3cr3t" not in repr(s)
    assert "s3cr3t" not in str(s.tushare_token)


def test_a_token_in_the_config_file_is_refused(tmp_path: Path) -> None:
    """Putting the token in a file is an error that says to use TUSHARE_TOKEN."""
    with pytest.raises(SettingsError, match="TUSHARE_TOKEN"):
        load_settings(env={}, config_path=_write(tmp_path, 'tushare_token = "x"\n'))


@pytest.mark.parametrize(
    ("body", "env", "message"),
    [
        ("unknown_key = 1\n", {}, "'unknown_key' is not a setting"),
        (
            "[model]\nhiden_size = 3\n",
            {},
            r"\[model\]: 'hiden_size' is not a setting; did you mean hidden_size",
        ),
        ('[model]\ncell = "xyz"\n', {}, "cell='xyz' is not one of lstm, gru, rnn"),
        (
            'checkpoint_store = "bogus"\n',
            {},
            "checkpoint_store='bogus' is not one of database, files",
        ),
        ("", {"FORECASTING_MODEL_PER_TICKER": "treu"}, "per_ticker='treu' is not true or false"),
        ("", {"FORECASTING_MODEL_SHRINK": "ture"}, "shrink='ture' is not true or false"),
        (
            "",
            {"FORECASTING_MODEL_HIDDEN_SIZE": "0"},
            "hidden_size='0' is not valid: input should be greater than or equal to 1",
        ),
        (
            "",
            {"FORECASTING_MODEL_EPOCHS": "3"},
            "environment variable FORECASTING_MODEL_EPOCHS is not a setting; did you mean "
            "FORECASTING_MODEL_MAX_EPOCHS",
        ),
        (
            "",
            {"FORECASTING_DATABASE_URL": ""},
            r"FORECASTING_DATABASE_URL is empty; set a value, or unset it for the default "
            r"\('sqlite:///forecasting.db'\)",
        ),
        ("", {"FORECASTING_MODEL_MAX_EPOCHS": "many"}, "FORECASTING_MODEL_MAX_EPOCHS"),
        ("tickers = [\n", {}, "not valid TOML"),
        (
            "",
            {"FORECASTING_HISTORY_START": "2015/01/01"},
            r"FORECASTING_HISTORY_START: history_start='2015/01/01' is not a date; "
            r"write it as YYYY-MM-DD \(or YYYYMMDD\)",
        ),
        ('history_start = "soon"\n', {}, "history_start='soon' is not a date"),
        ("", {"FORECASTING_MODEL_CELL": "transformer"}, "cell='transformer' is not one of lstm"),
        ('[model]\nloss = "mae"\n', {}, r"\[model\]: loss='mae' is not one of quantile, mse"),
        ("", {"FORECASTING_CHECKPOINT_STORE": "s3"}, "is not one of database, files"),
        ("", {"FORECASTING_TASK_RUNNER": "celery"}, "FORECASTING_TASK_RUNNER: task_runner="),
        ("", {"FORECASTING_SOURCE": "yahoo"}, "source='yahoo' is not one of tushare, csv, demo"),
        ("", {"FORECASTING_MODEL_SHRINK": "maybe"}, "shrink='maybe' is not true or false"),
        ("[model]\nmax_epochs = 2.5\n", {}, "max_epochs=2.5 is not a valid int"),
    ],
)
def test_bad_configuration_names_the_key(
    tmp_path: Path, body: str, env: dict[str, str], message: str
) -> None:
    """A bad key or value is an error naming it."""
    with pytest.raises(SettingsError, match=message):
        load_settings(env=env, config_path=_write(tmp_path, body))


def test_a_missing_named_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(env={"FORECASTING_CONFIG": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    ("body", "env"),
    [
        ("history_start = 2020-01-02\n", {}),  # a TOML date
        ('history_start = "2020-01-02"\n', {}),
        ("", {"FORECASTING_HISTORY_START": "20200102"}),
    ],
)
def test_history_start_is_a_date(tmp_path: Path, body: str, env: dict[str, str]) -> None:
    """However it is written, history_start is parsed once, into a date."""
    s = load_settings(env=env, config_path=_write(tmp_path, body))
    assert s.history_start == dt.date(2020, 1, 2)


def test_values_are_parsed_into_their_types(tmp_path: Path) -> None:
    """Choices are matched without regard to case; switches read as people write them."""
    s = load_settings(
        env={
            "FORECASTING_TASK_RUNNER": "Dask",
            "FORECASTING_MODEL_SHRINK": "off",
            "FORECASTING_MODEL_PER_TICKER": "yes",
            "FORECASTING_MODEL_CELL": "GRU",
        },
        config_path=_write(tmp_path, "[policy]\nmax_age_days = 90.0\n"),
    )
    assert (s.task_runner, s.model.cell) == ("dask", "gru")
    assert (s.model.shrink, s.model.per_ticker) == (False, True)
    assert s.policy.max_age_days == 90 and isinstance(s.policy.max_age_days, int)


def test_every_value_says_where_it_came_from(tmp_path: Path) -> None:
    """`forecasting config`'s rows: each setting's value and its origin (default, the file, or
    the variable that set it), the token masked."""
    path = _write(tmp_path, "[model]\nhidden_size = 16\nhorizon = 5\n")
    loaded = load_settings_and_origins(
        env={"FORECASTING_MODEL_HORIZON": "7", "TUSHARE_TOKEN": "s3cr3t"}, config_path=path
    )
    rows = {r["setting"]: r for r in loaded.rows()}
    assert rows["model.hidden_size"]["value"] == "16"
    assert rows["model.hidden_size"]["origin"] == str(path)
    assert (rows["model.horizon"]["value"], rows["model.horizon"]["origin"]) == (
        "7",
        "FORECASTING_MODEL_HORIZON",
    )
    assert rows["database_url"]["origin"] == "default"
    assert rows["tushare_token"]["value"] == "********"
    assert "s3cr3t" not in repr(loaded)
    assert set(rows) == {"tushare_token", *variables()}


def test_the_variables_the_project_reads_elsewhere_are_not_unknown(tmp_path: Path) -> None:
    """FORECASTING_CONFIG, the Secret block's name and the test suite's own variables pass."""
    env = {name: "x" for name in OTHER_VARIABLES if name != "FORECASTING_CONFIG"}
    assert load_settings(env=env, config_path=_write(tmp_path, "")).source is None
