"""The one source of truth for the database schema.

Every table lives on :data:`metadata`. ``sql/schema.sqlite.sql`` and
``sql/schema.postgresql.sql`` are generated from it (``python -m forecasting.data.schema``) and a
test checks they are current. Views are plain SQL that both dialects accept.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.schema import CreateIndex, CreateTable

metadata = MetaData()

securities = Table(
    "securities",
    metadata,
    Column("ticker", String(32), primary_key=True, comment="tushare form, e.g. 600519.SH"),
    Column("name", String(128)),
    Column("kind", String(16), nullable=False, server_default="stock"),  # stock | index
    Column("exchange", String(16)),
    # Reference data from the source's listing (tushare stock_basic), refreshed by each ingest:
    # see forecasting.data.listings.
    Column("board", String(16)),  # main | ChiNext | STAR | BSE
    Column("industry", String(64)),
    Column("list_date", Date),
    Column("delist_date", Date),
    # The whole-market fetch of this day had no bar for it (a suspension): the next increment
    # starts after this day, not after the last bar.
    Column("checked_through", Date),
    # The source its prices come from (tushare | csv | demo); the daily ingest uses it.
    Column("source", String(32)),
)

# Index constituents as published at each rebalance date (tushare index_weight), so that a
# universe ``index:000300.SH`` resolves to the members of a past day, not today's.
index_members = Table(
    "index_members",
    metadata,
    Column("index_code", String(32), primary_key=True),
    Column("trade_date", Date, primary_key=True),
    Column("ticker", String(32), primary_key=True),
)

# A stock's names in time (tushare namechange): an ST or *ST name over a span means the 5%
# daily limit applied then, which today's name cannot tell.
name_changes = Table(
    "name_changes",
    metadata,
    Column("ticker", String(32), primary_key=True),
    Column("start_date", Date, primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("end_date", Date),  # NULL: the name is still in use
)

prices = Table(
    "prices",
    metadata,
    Column("ticker", String(32), primary_key=True),
    Column("trade_date", Date, primary_key=True),
    Column("open", Float),
    Column("high", Float),
    Column("low", Float),
    Column("close", Float, nullable=False),
    Column("volume", Float),
    Column("amount", Float),
    # Unadjusted close * adj_factor is a back-adjusted (hfq) price that never changes when new
    # days arrive; NULL means the source sent prices that are already adjusted (or never split).
    Column("adj_factor", Float),
    Column("source", String(32), nullable=False),
    Column("ingested_at", DateTime(timezone=True), nullable=False),
)

trading_calendar = Table(
    "trading_calendar",
    metadata,
    Column("exchange", String(16), primary_key=True),
    Column("cal_date", Date, primary_key=True),
    Column("is_open", Boolean, nullable=False),
    Column("source", String(32), nullable=False, server_default="tushare"),
)

ingest_runs = Table(
    "ingest_runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("source", String(32), nullable=False),
    Column("tickers", Text, nullable=False),  # JSON list
    Column("rows_inserted", Integer, nullable=False, server_default="0"),
    Column("rows_updated", Integer, nullable=False, server_default="0"),
    Column("rows_unchanged", Integer, nullable=False, server_default="0"),
    Column("rows_rejected", Integer, nullable=False, server_default="0"),
    # running | success | partial | failed | aborted (SIGTERM/SIGINT) | abandoned (process gone)
    Column("status", String(16), nullable=False),
    Column("error", Text),
    # Written with every ticker's commit (with the counts so far): a "running" row whose
    # heartbeat is old belongs to a process that is gone, and the next ingest closes it.
    Column("heartbeat_at", DateTime(timezone=True)),
)

rejected_rows = Table(
    "rejected_rows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), ForeignKey("ingest_runs.run_id"), nullable=False),
    Column("ticker", String(32), nullable=False),
    Column("trade_date", Date),
    Column("raw", Text, nullable=False),  # JSON of the values (and raw text) the source sent
    Column("reason", Text, nullable=False),
    # sha256 of ticker, date, raw and reason: the same row refused again is not stored twice;
    # its row records the last run that refused it instead.
    Column("fingerprint", String(64)),
    Column("last_run_id", String(36)),
    Index("ix_rejected_rows_fingerprint", "fingerprint"),
)

# Every change to a stored price value: what it was, what it became, and the ingest that did it.
revisions = Table(
    "revisions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36), ForeignKey("ingest_runs.run_id"), nullable=False),
    Column("ticker", String(32), nullable=False),
    Column("trade_date", Date, nullable=False),
    Column("column_name", String(32), nullable=False),  # open | high | ... | adj_factor
    Column("old_value", Float),
    Column("new_value", Float),
    Column("source", String(32), nullable=False),
    Column("revised_at", DateTime(timezone=True), nullable=False),
    Index("ix_revisions_ticker_date", "ticker", "trade_date"),
)

model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("scope", String(64), nullable=False, server_default="global"),
    Column("kind", String(16), nullable=False),  # full | finetune
    Column("parent_id", Integer, ForeignKey("model_versions.id")),
    Column("trained_through", Date, nullable=False),
    Column("tickers", Text, nullable=False),  # JSON list
    Column("config", Text, nullable=False),  # JSON: every hyperparameter + target representation
    Column("scaler", Text, nullable=False),  # JSON: per-series scaler parameters
    Column("calibration", Text),  # JSON: interval calibration
    Column("history", Text),  # JSON: per-epoch train/val loss
    Column("val_rmse", Float),
    Column("val_naive_rmse", Float),
    Column("train_seconds", Float),
    Column("n_train_samples", Integer),
    Column("checkpoint", LargeBinary),
    Column("checkpoint_path", Text),
    Column("checkpoint_sha256", String(64), nullable=False),
    Column(
        "status", String(16), nullable=False
    ),  # candidate | active | retired | rejected | discarded
    # Why a version was retired other than by a successor: its checkpoint was missing or
    # corrupt when a run needed it (the run then retrained from scratch).
    Column("retired_reason", Text),
    # uq_model_versions_active_scope: see PARTIAL_INDEXES.
)

#: Partial indexes, by table, as SQL that SQLite and Postgres both speak. Declared as an
#: ``Index(..., postgresql_where=...)`` it made SQLAlchemy import its whole Postgres dialect
#: (~60 ms) in every command on SQLite, ``forecasting prices`` among them.
PARTIAL_INDEXES: dict[str, list[str]] = {
    # At most one active version per scope.
    "model_versions": [
        "CREATE UNIQUE INDEX uq_model_versions_active_scope ON model_versions (scope) "
        "WHERE status = 'active'"
    ],
}

model_checks = Table(
    "model_checks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(36)),
    Column("as_of_date", Date, nullable=False),
    Column("scope", String(64), nullable=False, server_default="global"),
    Column("model_version_id", Integer, ForeignKey("model_versions.id")),
    Column("check_window", Integer, nullable=False),
    Column("rmse", Float),
    Column("naive_rmse", Float),
    Column("ratio", Float),
    Column("threshold", Float),  # of the trigger that fired
    # forced | manual | no-model | age | too-few-days | absolute | degradation | relative | within
    Column("triggered_by", String(16)),
    Column("baseline_rmse", Float),  # the model's own validation RMSE, in the check's units
    Column("model_age_days", Integer),  # calendar days since its evidence starts
    Column("n_scored", Integer),  # errors the check scored (tickers x days x horizons)
    Column("decision", String(16), nullable=False),  # keep | finetune | retrain
    Column("reason", Text, nullable=False),
    Column("new_version_id", Integer, ForeignKey("model_versions.id")),
    Column("candidate_rmse", Float),
    Column("promoted", Boolean),
    Column("train_seconds", Float),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("as_of_date", "scope", "run_id", name="uq_model_checks_run"),
)

pipeline_runs = Table(
    "pipeline_runs",
    metadata,
    Column("run_id", String(36), primary_key=True),
    Column("flow_run_id", String(36)),
    Column("kind", String(16), nullable=False, server_default="daily"),  # daily | backfill
    # "live" for scheduled runs; a backfill replays history in a lineage of its own so that it
    # never uses (or disturbs) the live models, which were trained on data after its days.
    Column("lineage", String(128), nullable=False, server_default="live"),
    Column("as_of_date", Date, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("heartbeat_at", DateTime(timezone=True)),  # refreshed while it runs
    Column(
        "status", String(16), nullable=False
    ),  # running | success | partial | failed | abandoned
    Column("decision", String(16)),
    Column("model_version_id", Integer, ForeignKey("model_versions.id")),
    Column("n_forecast", Integer),
    Column("n_skipped", Integer),
    Column("counts", Text),  # JSON
    Column("error", Text),
)

# Tickers a run did not forecast, with the reason (``ingest failed: ...``, ``stale since D``,
# ``delisted on D``, too little history, no model): written in the run's publish.
run_skips = Table(
    "run_skips",
    metadata,
    Column("run_id", String(36), ForeignKey("pipeline_runs.run_id"), nullable=False),
    Column("ticker", String(32), nullable=False),
    Column("reason", Text, nullable=False),
    PrimaryKeyConstraint("run_id", "ticker", name="pk_run_skips"),
)

forecasts = Table(
    "forecasts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticker", String(32), nullable=False),
    Column("as_of_date", Date, nullable=False),
    Column("target_date", Date, nullable=False),
    Column("horizon", Integer, nullable=False),  # 1 = next trading day
    Column("yhat", Float, nullable=False),
    Column("yhat_lower", Float, nullable=False),
    Column("yhat_upper", Float, nullable=False),
    Column("base_close", Float, nullable=False),  # close on as_of_date: the naive forecast
    Column("model_version_id", Integer, ForeignKey("model_versions.id"), nullable=False),
    Column("run_id", String(36), ForeignKey("pipeline_runs.run_id"), nullable=False),
    Column("calendar_source", String(16), nullable=False),  # database | xshg | weekdays
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint(
        "ticker", "as_of_date", "horizon", "model_version_id", name="uq_forecasts_key"
    ),
    Index("ix_forecasts_as_of", "as_of_date"),
)

# Forecast shards stage their rows here, each in its own transaction (possibly on other
# machines); the run's write step moves them into ``forecasts`` in one transaction and empties
# the stage, so readers never see part of a run.
forecast_staging = Table(
    "forecast_staging",
    metadata,
    Column("run_id", String(36), ForeignKey("pipeline_runs.run_id"), nullable=False),
    Column("ticker", String(32), nullable=False),
    Column("as_of_date", Date, nullable=False),
    Column("target_date", Date, nullable=False),
    Column("horizon", Integer, nullable=False),
    Column("yhat", Float, nullable=False),
    Column("yhat_lower", Float, nullable=False),
    Column("yhat_upper", Float, nullable=False),
    Column("base_close", Float, nullable=False),
    Column("model_version_id", Integer, nullable=False),
    Column("calendar_source", String(16), nullable=False),
    PrimaryKeyConstraint(
        "run_id", "ticker", "as_of_date", "horizon", "model_version_id", name="pk_forecast_staging"
    ),
)

# The select list of forecast_errors over forecasts ``f`` joined to the realized close ``p``;
# forecasting.evaluation.evaluation reuses it for its per-lineage variant of the view.
FORECAST_ERROR_COLUMNS = """
SELECT f.ticker, f.as_of_date, f.target_date, f.horizon, f.model_version_id, f.run_id,
       f.yhat, f.yhat_lower, f.yhat_upper, f.base_close,
       p.close AS actual,
       f.yhat - p.close AS error,
       f.base_close - p.close AS naive_error,
       CASE WHEN p.close >= f.yhat_lower AND p.close <= f.yhat_upper THEN 1 ELSE 0 END
           AS covered
""".strip()

#: The lineage the plain views show: the scheduled and manual daily runs'.
LIVE = "live"

# Views are written once in SQL that SQLite and Postgres both accept, in dependency order.
# The *_all views hold every lineage (a backfill's, a restricted run's) with ``lineage`` as a
# column, newest row per lineage and key; the plain ones are the live lineage's, so that live
# and backfill forecasts never mix in what users read.
VIEWS: dict[str, str] = {
    "latest_forecasts_all": """
CREATE VIEW latest_forecasts_all AS
SELECT lineage, ticker, as_of_date, target_date, horizon, yhat, yhat_lower, yhat_upper,
       base_close, model_version_id, run_id, calendar_source, created_at
FROM (
    SELECT r.lineage, f.*, ROW_NUMBER() OVER (
        PARTITION BY r.lineage, f.ticker, f.as_of_date, f.horizon
        ORDER BY f.created_at DESC, f.id DESC
    ) AS rn
    FROM forecasts f
    JOIN pipeline_runs r ON r.run_id = f.run_id
) ranked
WHERE rn = 1
""".strip(),
    "latest_forecasts": f"""
CREATE VIEW latest_forecasts AS
SELECT * FROM latest_forecasts_all WHERE lineage = '{LIVE}'
""".strip(),
    "forecast_errors_all": f"""
CREATE VIEW forecast_errors_all AS
{FORECAST_ERROR_COLUMNS},
       f.lineage
FROM latest_forecasts_all f
JOIN prices p ON p.ticker = f.ticker AND p.trade_date = f.target_date
""".strip(),
    "forecast_errors": f"""
CREATE VIEW forecast_errors AS
SELECT * FROM forecast_errors_all WHERE lineage = '{LIVE}'
""".strip(),
}


def create_all(engine: Engine) -> None:
    """Create every table, index and view. Safe to call again: it changes nothing twice."""
    with engine.begin() as conn:
        metadata.create_all(conn)
        _add_missing_columns(conn)
        _create_views(conn)


def _add_missing_columns(conn: Connection) -> None:
    """Bring a database made by an earlier version up to date: add the nullable columns it
    lacks (``create_all`` creates missing tables only). Nothing else ever changes in place."""
    inspector = inspect(conn)
    for table in metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable:
                raise RuntimeError(
                    f"table {table.name} lacks the required column {column.name}; "
                    "this database was made by an incompatible version"
                )
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
    # An index on a column added above (create_all makes indexes only with their table).
    for table in metadata.sorted_tables:
        for index in table.indexes:
            index.create(conn, checkfirst=True)
        for statement in PARTIAL_INDEXES.get(table.name, []):
            conn.execute(text(statement.replace("INDEX", "INDEX IF NOT EXISTS", 1)))


def _view_columns(conn: Connection, name: str) -> set[str] | None:
    """The columns of view ``name``, or ``None`` when there is no such view."""
    if conn.dialect.name == "postgresql":
        exists = conn.execute(
            text("SELECT 1 FROM pg_views WHERE viewname = :n AND schemaname = current_schema()"),
            {"n": name},
        ).first()
    else:
        exists = conn.execute(
            text("SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = :n"), {"n": name}
        ).first()
    if not exists:
        return None
    return {c["name"] for c in inspect(conn).get_columns(name)}


def _create_views(conn: Connection) -> None:
    """Create the views that are missing. A database from before the views had a ``lineage``
    column gets them all recreated (dropped dependents first), once."""
    present = {name: _view_columns(conn, name) for name in VIEWS}
    if any(cols is not None and "lineage" not in cols for cols in present.values()):
        for name in reversed(VIEWS):
            conn.execute(text(f"DROP VIEW IF EXISTS {name}"))
        present = dict.fromkeys(VIEWS)
    for name, ddl in VIEWS.items():
        if present[name] is None:
            conn.execute(text(ddl))


def ddl(dialect_name: str) -> str:
    """The full DDL script for ``sqlite`` or ``postgresql``, generated from :data:`metadata`."""
    from sqlalchemy.dialects import postgresql, sqlite  # see PARTIAL_INDEXES: slow to import

    dialects: dict[str, Dialect] = {
        "sqlite": sqlite.dialect(),
        "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]  # untyped upstream
    }
    dialect = dialects[dialect_name]
    parts = [
        f"-- Generated by `python -m forecasting.data.schema`; do not edit. Dialect: {dialect_name}"
    ]
    for table in metadata.sorted_tables:
        parts.append(str(CreateTable(table).compile(dialect=dialect)).strip() + ";")
        indexes = [
            str(CreateIndex(index).compile(dialect=dialect)).strip() for index in table.indexes
        ]
        for statement in sorted([*indexes, *PARTIAL_INDEXES.get(table.name, [])], key=_index_name):
            parts.append(statement + ";")
    for body in VIEWS.values():
        parts.append(body + ";")
    return "\n\n".join(parts) + "\n"


def _index_name(statement: str) -> str:
    """``ix_a`` of ``CREATE [UNIQUE] INDEX ix_a ON ...``: the DDL lists a table's indexes by name."""
    words = statement.split()
    return words[words.index("INDEX") + 1]


def write_ddl(sql_dir: Path) -> list[Path]:
    """Regenerate the checked-in DDL files under ``sql_dir``."""
    out = []
    for name in ("sqlite", "postgresql"):
        path = sql_dir / f"schema.{name}.sql"
        path.write_text(ddl(name), encoding="utf-8")
        out.append(path)
    return out


if __name__ == "__main__":  # pragma: no cover - developer tool
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "sql"
    for p in write_ddl(root):
        print(p)
