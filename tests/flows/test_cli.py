"""The command line: help everywhere, and the commands that need no model, on a real file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forecasting_flows.cli import COMMANDS, EXIT_BROKEN_PIPE, main

#: The console script the package installs, beside this interpreter.
FORECASTING = str(Path(sys.executable).with_name("forecasting"))

#: What `forecasting --help` must not load: each takes from a tenth of a second to seconds.
HEAVY = ("torch", "pandas", "numpy", "sqlalchemy", "prefect")


def test_console_script_help() -> None:
    """`forecasting --help` lists every command."""
    out = subprocess.run(
        [sys.executable, "-m", "forecasting_flows.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command explains itself with --help, every option with a line of its own."""
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Usage: forecasting {command} [OPTIONS]")
    assert len(out.splitlines()) >= 3
    options = [line for line in out.splitlines() if line.startswith("  -")]
    assert options and all(len(line.split(None, 1)) == 2 for line in options[:-1]), out


def test_init_ingest_prices_models(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    shared_data: Path,
) -> None:
    """init-db, a CSV ingest (twice: idempotent), prices and models on a real SQLite file."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FORECASTING_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["init-db"]) == 0
    assert "schema ready" in capsys.readouterr().out
    csv = shared_data / "tushare_raw"
    assert main(["ingest", "--source", "csv", "--path", str(csv)]) == 0
    first = capsys.readouterr().out
    assert "128 inserted" in first
    assert main(["ingest", "--source", "csv", "--path", str(csv)]) == 0
    assert "0 inserted" in capsys.readouterr().out
    assert main(["prices"]) == 0
    out = capsys.readouterr().out
    assert "600519.SH  stock  2021-01-04  2021-04-09  64" in out
    assert main(["prices", "--format", "csv"]) == 0
    # A CSV file carries no reference data: name, board, industry and listing dates are empty.
    assert capsys.readouterr().out.splitlines()[:2] == [
        "ticker,kind,first_date,last_date,rows,name,board,industry,list_date,delist_date",
        "600519.SH,stock,2021-01-04,2021-04-09,64,,,,,",
    ]
    assert main(["prices", "-f", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0] == {
        "ticker": "600519.SH",
        "kind": "stock",
        "first_date": "2021-01-04",
        "last_date": "2021-04-09",
        "rows": 64,
        "name": None,
        "board": None,
        "industry": None,
        "list_date": None,
        "delist_date": None,
    }
    assert main(["models", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    # The tickers as people write them: after the option, space-separated; or comma-separated.
    # (a partial ingest, X.SZ being in no file, exits 1)
    assert main(["ingest", "--source", "csv", "--path", str(csv), "-t", "600519.sh", "X.SZ"]) == 1
    out = capsys.readouterr().out
    assert "2 tickers (1 failed)" in out and "X.SZ: " in out
    assert main(["models"]) == 0
    assert "no model versions yet" in capsys.readouterr().out
    assert main(["calendar", "--date", "2026-12-30", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert "2027-01-01" in out and "weekdays" in out


def test_bad_dates_and_config_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A malformed date is a usage error; a bad config file is reported, not a traceback."""
    assert main(["run", "--as-of", "yesterday"]) == 1
    assert capsys.readouterr().err == (
        "error: Invalid value for '--as-of': 'yesterday' is not a date; write it as YYYY-MM-DD "
        "(or YYYYMMDD); see `forecasting run --help`\n"
    )
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n", encoding="utf-8")
    monkeypatch.setenv("FORECASTING_CONFIG", str(bad))
    assert main(["prices"]) == 1
    assert "'nonsense' is not a setting" in capsys.readouterr().err


def test_tushare_without_a_token_says_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ingesting from tushare with no token fails before any network call, naming TUSHARE_TOKEN."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TUSHARE_TOKEN", raising=False)
    monkeypatch.setenv("FORECASTING_DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    assert main(["ingest", "--source", "tushare", "--tickers", "600519.SH"]) == 1
    assert "TUSHARE_TOKEN" in capsys.readouterr().err


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`forecasting ARGS` in a fresh process, in an empty folder, on a fresh SQLite file."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    clean["FORECASTING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    return subprocess.run(
        [FORECASTING, *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean, **env},
        timeout=120,
    )


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["backfill", "--help"]])
def test_help_loads_nothing_heavy(argv: list[str]) -> None:
    """`forecasting --help` and `forecasting COMMAND --help` answer without importing torch,
    pandas, SQLAlchemy or Prefect, which is what keeps them well under half a second."""
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.argv[2:] if m in sys.modules), "
        "file=sys.stderr))\n"
        "from forecasting_flows.cli import main\n"
        "main([sys.argv[1]] if sys.argv[1] == '--help' else [sys.argv[1], '--help'])\n"
    )
    command = argv[0]
    done = subprocess.run(
        [sys.executable, "-c", probe, command, *HEAVY], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: forecasting" in done.stdout
    assert done.stderr.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        pytest.param(
            ["backfill", "--start", "2024-05-01", "--end", "2024-01-01"],
            {},
            1,
            "error: --start 2024-05-01 is after --end 2024-01-01; swap them",
            id="backfill-start-after-end",
        ),
        pytest.param(
            ["ingest", "--source", "demo", "--start", "2999-01-01"],
            {},
            1,
            "error: --start 2999-01-01 is after today (",
            id="ingest-start-after-today",
        ),
        pytest.param(
            ["evaluate", "--start", "20240501", "--end", "20240101"],
            {},
            1,
            "error: --start 2024-05-01 is after --end 2024-01-01; swap them",
            id="evaluate-start-after-end",
        ),
        pytest.param(
            ["ingest", "--source", "demo"],
            {"FORECASTING_HISTORY_START": "2015/01/01"},
            1,
            "error: environment variable FORECASTING_HISTORY_START: history_start='2015/01/01' "
            "is not a date; write it as YYYY-MM-DD (or YYYYMMDD)",
            id="bad-history-start",
        ),
        pytest.param(
            ["train"],
            {"FORECASTING_MODEL_CELL": "transformer"},
            1,
            "error: environment variable FORECASTING_MODEL_CELL: cell='transformer' is not one "
            "of lstm, gru, rnn",
            id="unknown-model-setting-value",
        ),
        pytest.param(
            ["prices"],
            {"FORECASTING_DATABASE_URL": "postgresql://me:hunter2@db:port/x"},
            1,
            "error: database URL 'postgresql://me:***@db:port/x' is not usable",
            id="database-url-that-does-not-parse",
        ),
        pytest.param(
            ["init-db"],
            {"FORECASTING_DATABASE_URL": "sqlite:////no/such/folder/x.db"},
            1,
            "error: cannot open the database sqlite:////no/such/folder/x.db: unable to open "
            "database file; check that the folder /no/such/folder exists",
            id="sqlite-file-in-a-missing-folder",
        ),
        pytest.param(
            ["train"],
            {},
            1,
            "error: no forecasting database at sqlite:///",
            id="train-without-a-database",
        ),
        pytest.param(
            ["prices"],
            {"FORECASTING_MODEL_EPOCHS": "3"},
            1,
            "error: environment variable FORECASTING_MODEL_EPOCHS is not a setting; did you "
            "mean FORECASTING_MODEL_MAX_EPOCHS",
            id="misspelt-variable",
        ),
        pytest.param(
            ["prices"],
            {"FORECASTING_MODEL_PER_TICKER": "treu"},
            1,
            "error: environment variable FORECASTING_MODEL_PER_TICKER: per_ticker='treu' is not "
            "true or false",
            id="not-a-boolean",
        ),
        pytest.param(
            ["train"],
            {"FORECASTING_CHECKPOINT_STORE": "bogus"},
            1,
            "error: environment variable FORECASTING_CHECKPOINT_STORE: checkpoint_store='bogus' "
            "is not one of database, files",
            id="bad-choice-before-any-training",
        ),
        pytest.param(
            ["prices"],
            {"FORECASTING_DATABASE_URL": ""},
            1,
            "error: environment variable FORECASTING_DATABASE_URL is empty; set a value, or "
            "unset it for the default ('sqlite:///forecasting.db')",
            id="empty-database-url",
        ),
        pytest.param(
            ["prices"],
            {"FORECASTING_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"},
            1,
            "error: cannot open the database postgresql+psycopg://postgres@127.0.0.1:1/x: "
            "connection failed",
            id="postgres-that-is-down",
        ),
        pytest.param(
            ["models"],
            {"FORECASTING_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/no_such_db_i15"},
            1,
            "error: cannot open the database postgresql+psycopg://postgres@127.0.0.1:5432/"
            'no_such_db_i15: connection failed: connection to server at "127.0.0.1", port 5432 '
            'failed: FATAL: database "no_such_db_i15" does not exist; check '
            "FORECASTING_DATABASE_URL and that the server is running",
            id="postgres-database-that-does-not-exist",
            marks=pytest.mark.postgres,
        ),
        pytest.param(
            ["prices"],
            {"FORECASTING_DATABASE_URL": "notaurl"},
            1,
            "error: database URL 'notaurl' is not usable",
            id="not-a-url",
        ),
        pytest.param(
            ["prices"],
            {},
            1,
            "error: no forecasting database at sqlite:///",
            id="read-only-command-on-no-database",
        ),
        pytest.param(
            ["run", "--as-of", "2019/02/01"],
            {},
            1,
            "error: Invalid value for '--as-of': '2019/02/01' is not a date; write it as "
            "YYYY-MM-DD (or YYYYMMDD); see `forecasting run --help`",
            id="date-option-in-another-format",
        ),
        pytest.param(
            ["prices", "--colour"],
            {},
            1,
            "error: No such option: --colour; see `forecasting prices --help`",
            id="unknown-option",
        ),
        pytest.param(
            ["train", "--full", "--finetune"],
            {},
            1,
            "error: --full and --finetune exclude each other; pass one",
            id="exclusive-options",
        ),
    ],
)
def test_a_mistake_is_one_line_that_says_the_fix(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, message: str
) -> None:
    """A mistake a person can fix ends the real command with one line on stderr that names
    the option or setting and the fix, and exit 1: no traceback. Before it there is at most
    the command's first progress line, for a mistake found once work has started."""
    done = _cli(tmp_path, *args, **env)
    *before, last = done.stderr.splitlines()
    assert last.startswith(message), done.stderr
    assert all(" INFO forecasting.cli: " in line for line in before), done.stderr
    assert len(before) <= 1 and "Traceback" not in done.stderr
    assert "hunter2" not in done.stderr
    assert done.returncode == code


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`forecasting prices | head` where head has gone: no traceback and no warning, and the
    exit status a process killed by SIGPIPE would have."""
    assert _cli(tmp_path, "init-db").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    env["FORECASTING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    proc = subprocess.Popen(
        [FORECASTING, "prices"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=env,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the command has imported enough to print
    assert proc.wait(timeout=120) == EXIT_BROKEN_PIPE
    assert proc.stderr.read() == ""
    proc.stderr.close()


def test_a_traceback_only_with_verbose(tmp_path: Path) -> None:
    """-v, anywhere on the line, adds the traceback above the same one-line error."""
    quiet = _cli(tmp_path, "prices")
    loud = _cli(tmp_path, "prices", "-v")
    assert quiet.returncode == loud.returncode == 1
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert loud.stderr.splitlines()[-1] == quiet.stderr.strip()


def test_global_options_anywhere_and_the_version(tmp_path: Path) -> None:
    """`forecasting --version` answers; -v works after the command as before it."""
    done = _cli(tmp_path, "--version")
    assert done.returncode == 0 and done.stdout.startswith("forecasting ")
    assert _cli(tmp_path, "config", "-v").returncode == 0
    assert _cli(tmp_path, "-v", "config").returncode == 0


def test_only_init_db_ingest_and_demo_create_a_database(tmp_path: Path) -> None:
    """prices, calendar, models, evaluate, report, and also run, train and backfill, on a URL
    with no database behind it say to create one, exit 1 and leave no file behind: a run on a
    missing file would otherwise start over from nothing and report success."""
    commands = [
        ["prices"],
        ["calendar"],
        ["models"],
        ["evaluate"],
        ["report"],
        ["run", "--no-prefect", "--as-of", "2019-01-04"],
        ["train", "--full"],
        ["backfill", "--start", "2019-01-02", "--end", "2019-01-04"],
    ]
    for command in commands:
        done = _cli(tmp_path, *command)
        assert done.returncode == 1, done.stderr
        assert "run `forecasting init-db`" in done.stderr
    assert not (tmp_path / "cli.db").exists()
    assert not list(tmp_path.iterdir())


def test_config_prints_each_setting_and_where_it_came_from(tmp_path: Path) -> None:
    """`forecasting config --format json`: every setting with its value and origin; the
    token masked."""
    import json

    (tmp_path / "forecasting.toml").write_text("[model]\nhidden_size = 16\n", encoding="utf-8")
    done = _cli(
        tmp_path,
        "config",
        "--format",
        "json",
        TUSHARE_TOKEN="s3cr3t-tok",
        FORECASTING_MODEL_MAX_EPOCHS="4",
    )
    assert done.returncode == 0, done.stderr
    assert "s3cr3t" not in done.stdout
    rows = {r["setting"]: r for r in json.loads(done.stdout)}
    assert rows["tushare_token"] == {
        "setting": "tushare_token",
        "value": "********",
        "origin": "TUSHARE_TOKEN",
        "variable": "TUSHARE_TOKEN",
    }
    assert (rows["model.hidden_size"]["value"], rows["model.hidden_size"]["origin"]) == (
        "16",
        "forecasting.toml",
    )
    assert rows["model.max_epochs"]["origin"] == "FORECASTING_MODEL_MAX_EPOCHS"
    assert rows["database_url"]["origin"] == "FORECASTING_DATABASE_URL"
    assert rows["model.cell"] == {
        "setting": "model.cell",
        "value": "lstm",
        "origin": "default",
        "variable": "FORECASTING_MODEL_CELL",
    }


def _on_a_terminal(tmp_path: Path, *args: str) -> str:
    """`forecasting ARGS` with stdout and stderr on one pseudo-terminal, as a person runs it;
    everything the terminal showed."""
    import pty

    leader, follower = pty.openpty()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    clean["FORECASTING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    proc = subprocess.Popen(
        [FORECASTING, *args], stdout=follower, stderr=follower, cwd=tmp_path, env=clean
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command has ended
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.wait(timeout=120) == 0, shown
    return shown.decode(errors="replace")


def test_the_ingest_summary_is_said_once_on_a_terminal(tmp_path: Path, shared_data: Path) -> None:
    """On a terminal the summary is logged as the ingest ends and not printed again; in a pipe
    it is on stdout (for a script) and in the log (for CI) both."""
    csv = str(shared_data / "tushare_raw")
    shown = _on_a_terminal(tmp_path, "ingest", "--source", "csv", "--path", csv)
    assert shown.count("128 inserted") == 1, shown
    done = _cli(tmp_path, "ingest", "--source", "csv", "--path", csv)
    assert "0 inserted" in done.stdout and "0 inserted" in done.stderr


def test_log_file_and_json_logs(tmp_path: Path, shared_data: Path) -> None:
    """--log-file appends the milestones to a file; --log-json makes every line a JSON object,
    the command's first line (what it is doing) among them."""
    csv = str(shared_data / "tushare_raw")
    log = tmp_path / "run.log"
    done = _cli(tmp_path, "ingest", "--source", "csv", "--path", csv, "--log-file", str(log))
    assert done.returncode == 0, done.stderr
    text = log.read_text(encoding="utf-8")
    assert " INFO forecasting.cli: ingest from csv" in text
    assert "600519.SH" in text and "128 inserted" in text
    done = _cli(tmp_path, "--log-json", "ingest", "--source", "csv", "--path", csv)
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert records[0]["logger"] == "forecasting.cli"
    assert {"time", "level", "logger", "message"} <= set(records[-1])
    assert any("0 inserted" in r["message"] for r in records)


def test_sql_lists_and_shows_the_queries(capsys: pytest.CaptureFixture[str]) -> None:
    """`forecasting sql` lists every file of sql/queries with its first comment line; `sql
    show NAME` prints one as it is; a wrong name is one line with the close ones."""
    queries = Path(__file__).resolve().parents[2] / "sql" / "queries"
    assert main(["sql", "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [q["name"] for q in listed] == sorted(p.stem for p in queries.glob("*.sql"))
    assert all(q["what"] for q in listed)
    assert main(["sql", "show", "forecast_path.sql"]) == 0
    assert capsys.readouterr().out == (queries / "forecast_path.sql").read_text(encoding="utf-8")
    assert main(["sql", "show", "retrain_histry"]) == 1
    assert capsys.readouterr().err == (
        "error: no query named 'retrain_histry'; did you mean retrain_history? "
        "`forecasting sql list` lists them\n"
    )


def test_prices_loads_no_numerics_or_prefect(tmp_path: Path) -> None:
    """`forecasting prices` reads the database without importing torch, pandas, numpy or
    Prefect (a second or more of imports for a listing)."""
    assert _cli(tmp_path, "init-db").returncode == 0
    probe = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in sys.argv[1:] if m in sys.modules), "
        "file=sys.stderr))\n"
        "from forecasting_flows.cli import main\n"
        "sys.exit(main(['prices']))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FORECASTING_", "TUSHARE"))}
    env["FORECASTING_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    done = subprocess.run(
        [sys.executable, "-c", probe, "torch", "pandas", "numpy", "prefect"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no prices yet" in done.stdout
    assert done.stderr.strip() == "[]"


def test_config_says_which_file_it_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table starts with the config file and whether it was there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FORECASTING_CONFIG", raising=False)
    assert main(["config"]) == 0
    assert capsys.readouterr().out.startswith(
        "config file: forecasting.toml (not found: defaults)\n"
    )
    (tmp_path / "forecasting.toml").write_text('source = "csv"\n', encoding="utf-8")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("config file: forecasting.toml (read)\n")
    assert any(
        line.split()[:3] == ["source", "csv", "forecasting.toml"] for line in out.splitlines()
    )
