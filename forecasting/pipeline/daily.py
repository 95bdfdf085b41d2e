"""The daily pipeline as plain library steps: check → decide → refit or keep → forecast → write.

``forecasting_flows/daily.py`` wires these steps into Prefect tasks; :func:`run_pipeline` composes the same
steps without Prefect (backfills, benchmarks, tests of the library). Every step takes explicit
arguments and returns plain, picklable data — never torch objects.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.calendar import SOURCE_RANK, TradingCalendar
from forecasting.data.locks import scope_lock
from forecasting.data.prices import load_closes
from forecasting.data.schema import forecast_staging, model_checks, pipeline_runs, prices
from forecasting.model import registry
from forecasting.model.inference import predict, score
from forecasting.model.lstm import ModelConfig
from forecasting.model.trained_model import TrainedModel
from forecasting.model.training import fit
from forecasting.pipeline import runs
from forecasting.pipeline.forecast_store import (
    WriteResult,
    clear_staging,
    next_day_forecasts,
    stage_forecasts,
    staged_rows,
    write_forecasts,
)
from forecasting.pipeline.retrain_policy import (
    Action,
    CheckNumbers,
    challenger_wins,
    decide,
    finetune_insufficient,
)
from forecasting.settings import Settings

log = logging.getLogger(__name__)

GLOBAL = "global"


# --------------------------------------------------------------------------------------------
# Scopes and universe


def scope_name(lineage: str, unit: str) -> str:
    """``global`` / ``600519.SH`` for the live lineage; prefixed for backfill lineages, whose
    models must never be mixed with live ones (they are trained on different cutoffs)."""
    return unit if lineage == "live" else f"{lineage}/{unit}"


def universe(
    conn: Connection, settings: Settings, tickers: Sequence[str] | None = None
) -> list[str]:
    """The tickers to work on: the explicit list, else the configured universe, else every
    ticker with prices."""
    if tickers:
        return sorted({t.upper() for t in tickers})
    if settings.tickers:
        return sorted(settings.tickers)
    return sorted(r[0] for r in conn.execute(select(prices.c.ticker).distinct()))


def scope_units(settings: Settings, tickers: Sequence[str]) -> dict[str, list[str]]:
    """Model unit -> the tickers it covers: one global model, or one model per ticker."""
    if settings.model.per_ticker:
        return {t: [t] for t in tickers}
    return {GLOBAL: list(tickers)}


def resolve_as_of(
    engine: Engine, today: dt.date, tickers: Sequence[str] | None = None
) -> dt.date | None:
    """The latest trading day with prices on or before ``today`` (Asia/Shanghai date)."""
    stmt = select(func.max(prices.c.trade_date)).where(prices.c.trade_date <= today)
    if tickers:
        stmt = stmt.where(prices.c.ticker.in_(list(tickers)))
    with engine.connect() as conn:
        return conn.execute(stmt).scalar()


def shanghai_today(now: dt.datetime | None = None) -> dt.date:
    from zoneinfo import ZoneInfo

    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    return now.astimezone(ZoneInfo("Asia/Shanghai")).date()


def _lookback_start(end: dt.date, trading_days: int) -> dt.date:
    # Calendar days covering `trading_days` sessions, with room for holidays and suspensions.
    return end - dt.timedelta(days=int(trading_days * 1.5) + 30)


# --------------------------------------------------------------------------------------------
# Check and decide


@dataclass(frozen=True)
class ScopeCheck:
    """The drift check of one scope and the decision taken on it (picklable)."""

    scope: str
    tickers: tuple[str, ...]
    version_id: int | None
    trained_through: dt.date | None
    check_window: int
    rmse: float
    naive_rmse: float
    n: int
    model_age_days: int | None
    action: str
    reason: str
    threshold: float
    breached: bool

    @property
    def ratio(self) -> float:
        return self.rmse / self.naive_rmse if self.n and self.naive_rmse else math.nan


def check_scope(
    engine: Engine,
    settings: Settings,
    as_of: dt.date,
    scope: str,
    tickers: Sequence[str],
    *,
    force_retrain: bool = False,
) -> ScopeCheck:
    """Score the scope's active model on the newest ``check_window`` trading days after its
    ``trained_through`` (out of sample), and decide what to do."""
    policy = settings.policy
    with engine.connect() as conn:
        info = registry.active_version(conn, scope)
        numbers = CheckNumbers(has_model=False)
        # Evidence counts from the last refit attempt: when a challenger trained through a
        # later day was rejected, the active model was re-validated on that day, so its age and
        # its check window restart there (otherwise a rejected refit would be retried daily).
        revalidated: dt.date | None = None
        if info is not None:
            last = registry.latest_attempt(conn, scope)
            if last is not None and last.trained_through > info.trained_through:
                revalidated = last.trained_through
            model = registry.load_model(conn, info.id)
            evidence_after = revalidated or info.trained_through
            start = _lookback_start(
                info.trained_through, model.config.input_len + model.config.horizon
            )
            series = load_closes(conn, tickers=list(tickers), through=as_of, start=start)
            s = score(
                model, series, after=evidence_after, through=as_of, window=policy.check_window
            )
            age = (as_of - evidence_after).days
            baseline = model.calibration.get(BASELINE_KEY)
            if baseline is None:  # a version saved before baselines were recorded
                cfg = model.config
                past = load_closes(
                    conn,
                    tickers=list(tickers),
                    through=info.trained_through,
                    start=_lookback_start(
                        info.trained_through, cfg.val_days + cfg.input_len + cfg.horizon
                    ),
                )
                baseline = validation_baseline(model, past, info.trained_through)
            n = 0 if s.n and _unseen_days(series, evidence_after) < policy.min_check_days else s.n
            numbers = CheckNumbers(True, s.rmse, s.naive_rmse, n, age, float(baseline or math.nan))
    decision = decide(numbers, policy, force_retrain=force_retrain)
    reason = decision.reason
    if info is not None and numbers.n == 0 and decision.action is Action.KEEP:
        reason = f"fewer than {policy.min_check_days} unseen trading days since training"
        if revalidated is not None:
            reason = (
                f"fewer than {policy.min_check_days} unseen trading days since a challenger "
                f"trained through {revalidated} was rejected"
            )
    elif revalidated is not None and decision.action is not Action.KEEP and not force_retrain:
        reason += f" (counted from the rejected refit trained through {revalidated})"
    return ScopeCheck(
        scope=scope,
        tickers=tuple(tickers),
        version_id=info.id if info else None,
        trained_through=info.trained_through if info else None,
        check_window=policy.check_window,
        rmse=numbers.rmse,
        naive_rmse=numbers.naive_rmse,
        n=numbers.n,
        model_age_days=numbers.model_age_days,
        action=decision.action.value,
        reason=reason,
        threshold=decision.threshold,
        breached=decision.breached,
    )


BASELINE_KEY = "check_baseline_rmse"


def validation_baseline(
    model: TrainedModel, series: Mapping[str, pd.Series], through: dt.date
) -> float:
    """The model's RMSE on its own validation span (the last ``val_days`` trading days up to
    ``through``), in exactly the units of the drift check, so the two can be compared."""
    start = _validation_start(series, through, model.config.val_days)
    if start is None:
        return math.nan
    return score(model, series, after=start, through=through, window=model.config.val_days).rmse


def _unseen_days(series: Mapping[str, pd.Series], after: dt.date) -> int:
    dates: set[dt.date] = set()
    for s in series.values():
        dates.update(d for d in s.index if d > after)
    return len(dates)


# --------------------------------------------------------------------------------------------
# Refit (fine-tune or full retrain) with champion/challenger


@dataclass(frozen=True)
class ScopeOutcome:
    """What happened to one scope in one run (picklable); mirrors its ``model_checks`` row."""

    scope: str
    as_of: dt.date
    version_before: int | None
    action: str
    reason: str
    rmse: float
    naive_rmse: float
    threshold: float
    check_window: int
    new_version_id: int | None = None
    candidate_ratio: float = math.nan
    champion_ratio: float = math.nan
    promoted: bool | None = None
    train_seconds: float = 0.0
    active_version_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _model_config(settings: Settings) -> ModelConfig:
    return ModelConfig.from_settings(settings.model)


def _training_series(
    conn: Connection, settings: Settings, tickers: Sequence[str], as_of: dt.date
) -> dict[str, pd.Series]:
    cfg = settings.model
    start = _lookback_start(as_of, cfg.history_days + cfg.input_len + cfg.horizon)
    return load_closes(conn, tickers=list(tickers), through=as_of, start=start)


def _val_ratio(model: TrainedModel) -> float:
    if not model.val_naive_rmse or math.isnan(model.val_rmse):
        return math.nan
    return model.val_rmse / model.val_naive_rmse


def apply_decision(
    engine: Engine,
    settings: Settings,
    as_of: dt.date,
    check: ScopeCheck,
    *,
    run_id: str | None,
) -> ScopeOutcome:
    """Carry out the decision for one scope and record it in ``model_checks``.

    keep: record only. finetune: warm-start from the active version; if that does not bring
    validation RMSE back under the threshold, retrain from scratch. A candidate becomes active
    only if its validation ratio to naive beats the active model's on the same recent windows;
    otherwise it is stored as ``rejected`` and the rejection is recorded.
    """
    policy = settings.policy
    base: dict[str, Any] = dict(
        scope=check.scope,
        as_of=as_of,
        version_before=check.version_id,
        rmse=check.rmse,
        naive_rmse=check.naive_rmse,
        threshold=check.threshold,
        check_window=check.check_window,
    )
    if check.action == Action.KEEP:
        outcome = ScopeOutcome(
            **base, action="keep", reason=check.reason, active_version_id=check.version_id
        )
        _record(engine, run_id, outcome, check)
        return outcome

    config = _model_config(settings)
    with engine.connect() as conn:
        series = _training_series(conn, settings, check.tickers, as_of)
        active = registry.load_model(conn, check.version_id) if check.version_id else None
    reason = check.reason
    action = Action(check.action)
    started = time.perf_counter()
    candidate: TrainedModel | None = None
    kind = "full"
    if action == Action.FINETUNE and active is not None:
        candidate = fit(series, active.config, as_of, init=active)
        kind = "finetune"
        if finetune_insufficient(candidate.val_rmse, candidate.val_naive_rmse, policy):
            reason += (
                f"; fine-tune left validation RMSE/naive at {_val_ratio(candidate):.3f}, "
                "so retrained from scratch"
            )
            action = Action.RETRAIN
            candidate = None
    if candidate is None:
        candidate = fit(series, config, as_of)
        kind = "full"
    train_seconds = time.perf_counter() - started

    candidate.calibration[BASELINE_KEY] = validation_baseline(candidate, series, as_of)
    cand_ratio = _val_ratio(candidate)
    champ_ratio = math.nan
    if active is not None:
        val_after = _validation_start(series, as_of, candidate.config.val_days)
        if val_after is not None:
            s = score(
                active, series, after=val_after, through=as_of, window=candidate.config.val_days
            )
            champ_ratio = s.ratio
    # A full retrain (scheduled by age or calendar, forced, or after a failed fine-tune)
    # replaces a champion it ties: the challenger saw fresher data.
    promoted = active is None or challenger_wins(
        cand_ratio, champ_ratio, champion_due=check.breached or action is Action.RETRAIN
    )
    if active is not None and not promoted:
        reason += (
            f"; challenger rejected: validation RMSE/naive {cand_ratio:.3f} "
            f"does not beat the active model's {champ_ratio:.3f}"
        )
    with engine.begin() as conn:
        new_id = registry.save_version(
            conn,
            candidate,
            kind=kind,
            parent_id=check.version_id if kind == "finetune" else None,
            scope=check.scope,
            status="candidate",
            model_dir=settings.model_dir,
            store=settings.checkpoint_store,
        )
        if promoted:
            registry.activate(conn, new_id)
        else:
            registry.set_status(conn, new_id, "rejected")
        outcome = ScopeOutcome(
            **base,
            action=action.value,
            reason=reason,
            new_version_id=new_id,
            candidate_ratio=cand_ratio,
            champion_ratio=champ_ratio,
            promoted=promoted,
            train_seconds=train_seconds,
            active_version_id=new_id if promoted else check.version_id,
        )
        _insert_check(conn, run_id, outcome, candidate_rmse=candidate.val_rmse)
    log.info("scope %s as of %s: %s (%s)", check.scope, as_of, action.value, reason)
    return outcome


def _validation_start(
    series: Mapping[str, pd.Series], as_of: dt.date, val_days: int
) -> dt.date | None:
    dates = sorted({d for s in series.values() for d in s.index if d <= as_of})
    if len(dates) <= val_days:
        return None
    return dates[-(val_days + 1)]


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _insert_check(
    conn: Connection, run_id: str | None, o: ScopeOutcome, *, candidate_rmse: float | None = None
) -> None:
    conn.execute(
        insert(model_checks).values(
            run_id=run_id,
            as_of_date=o.as_of,
            scope=o.scope,
            model_version_id=o.version_before,
            check_window=o.check_window,
            rmse=_nan_to_none(o.rmse),
            naive_rmse=_nan_to_none(o.naive_rmse),
            ratio=_nan_to_none(o.rmse / o.naive_rmse if o.naive_rmse else math.nan),
            threshold=_nan_to_none(o.threshold),
            decision=o.action,
            reason=o.reason,
            new_version_id=o.new_version_id,
            candidate_rmse=_nan_to_none(candidate_rmse),
            promoted=o.promoted,
            train_seconds=o.train_seconds or None,
            created_at=runs.utcnow(),
        )
    )


def _record(engine: Engine, run_id: str | None, outcome: ScopeOutcome, check: ScopeCheck) -> None:
    with engine.begin() as conn:
        _insert_check(conn, run_id, outcome)


# --------------------------------------------------------------------------------------------
# Forecast


@dataclass
class ForecastBatch:
    """A run's forecast rows (plain dicts, price units) and the tickers skipped with reasons.

    Rows either travel in ``rows`` or were staged in ``forecast_staging`` by a shard
    (:func:`forecast_shard`); then only their tickers and count travel, in ``staged`` and
    ``n_staged``.
    """

    as_of: dt.date
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    versions: dict[str, int] = field(default_factory=dict)
    staged: list[str] = field(default_factory=list)
    n_staged: int = 0

    def merge(self, other: ForecastBatch) -> ForecastBatch:
        return ForecastBatch(
            self.as_of,
            self.rows + other.rows,
            {**self.skipped, **other.skipped},
            {**self.versions, **other.versions},
            self.staged + other.staged,
            self.n_staged + other.n_staged,
        )

    @property
    def tickers(self) -> list[str]:
        return sorted({r["ticker"] for r in self.rows} | set(self.staged))

    @property
    def n_rows(self) -> int:
        return len(self.rows) + self.n_staged


def target_dates(
    calendar: TradingCalendar, as_of: dt.date, horizon: int
) -> list[tuple[dt.date, str]]:
    """The h-th trading day after ``as_of`` for h = 1..H, each with the weakest calendar source
    (``database`` < ``xshg`` < ``weekdays``) among the days walked to reach it: a holiday
    guessed by the weekday rule moves every later target as much as a guessed open day."""
    dates = calendar.next_trading_days(as_of, horizon).dates
    out = []
    weakest = "database"
    day = as_of
    for target in dates:
        while day < target:
            day += dt.timedelta(days=1)
            src = calendar.source_for(day)
            if SOURCE_RANK[src] > SOURCE_RANK[weakest]:
                weakest = src
        out.append((target, weakest))
    return out


def forecast(
    engine: Engine,
    settings: Settings,
    as_of: dt.date,
    units: Mapping[str, Sequence[str]],
    *,
    lineage: str = "live",
    calendar: TradingCalendar | None = None,
) -> ForecastBatch:
    """Forecast horizons 1..H for every eligible ticker of the given scope units.

    A ticker with too little history, stale prices or no model is skipped with a reason; it
    never fails the batch.
    """
    policy = settings.policy
    batch = ForecastBatch(as_of)
    with engine.connect() as conn:
        cal = calendar or TradingCalendar.load(conn, exchange=settings.exchange)
        for unit, tickers in units.items():
            scope = scope_name(lineage, unit)
            info = registry.active_version(conn, scope)
            if info is None:
                for t in tickers:
                    batch.skipped[t] = (
                        f"no active model for scope {scope!r}; run `forecasting train --full`"
                    )
                continue
            model = registry.load_model(conn, info.id)
            cfg = model.config
            need = max(policy.min_history, cfg.input_len + 1)
            start = _lookback_start(as_of, max(need, cfg.input_len) + 5)
            series = load_closes(conn, tickers=list(tickers), through=as_of, start=start)
            counts = _history_counts(conn, tickers, as_of)
            eligible: dict[str, pd.Series] = {}
            for t in tickers:
                s = series.get(t)
                if s is None or s.empty:
                    batch.skipped[t] = f"{t}: no prices on or before {as_of}"
                    continue
                last = s.index[-1]
                if (as_of - last).days > policy.stale_days:
                    batch.skipped[t] = (
                        f"{t}: stale, last price on {last} is {(as_of - last).days} days before "
                        f"{as_of} (stale_days={policy.stale_days}); ingest newer prices"
                    )
                    continue
                if counts.get(t, 0) < need:
                    batch.skipped[t] = (
                        f"{t}: only {counts.get(t, 0)} trading days of history up to {as_of}, needs {need}"
                    )
                    continue
                eligible[t] = s
            if not eligible:
                continue
            paths = predict(model, eligible)
            dates = target_dates(cal, as_of, cfg.horizon)
            for t in eligible:
                p = paths.get(t)
                if p is None:
                    batch.skipped[t] = (
                        f"{t}: the model for scope {scope!r} cannot forecast it (not in its training universe); it joins at the next retrain"
                    )
                    continue
                for h, (target, src) in enumerate(dates, start=1):
                    batch.rows.append(
                        {
                            "ticker": t,
                            "as_of_date": as_of,
                            "target_date": target,
                            "horizon": h,
                            "yhat": float(p.yhat[h - 1]),
                            "yhat_lower": float(p.lower[h - 1]),
                            "yhat_upper": float(p.upper[h - 1]),
                            "base_close": float(p.base_close),
                            "model_version_id": info.id,
                            "calendar_source": src,
                        }
                    )
            batch.versions[scope] = info.id
    return batch


def _history_counts(conn: Connection, tickers: Sequence[str], as_of: dt.date) -> dict[str, int]:
    out: dict[str, int] = {}
    tickers = list(tickers)
    for i in range(0, len(tickers), 500):
        chunk = tickers[i : i + 500]
        stmt = (
            select(prices.c.ticker, func.count())
            .where(prices.c.ticker.in_(chunk), prices.c.trade_date <= as_of)
            .group_by(prices.c.ticker)
        )
        out.update({t: int(n) for t, n in conn.execute(stmt)})
    return out


# --------------------------------------------------------------------------------------------
# Write and summarize


@dataclass
class RunSummary:
    run_id: str | None
    as_of: dt.date | None
    lineage: str
    status: str  # success | already-complete | no-data | failed
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
                ratio = o.rmse / o.naive_rmse if o.naive_rmse else math.nan
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
            lines += [f"- **{t}**: {why}" for t, why in sorted(self.skipped.items())]
        return "\n".join(lines) + "\n"


def _fmt(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def forecast_shard(
    engine: Engine,
    settings: Settings,
    as_of: dt.date,
    units: Mapping[str, Sequence[str]],
    run_id: str,
    *,
    lineage: str = "live",
) -> ForecastBatch:
    """Forecast one shard and stage its rows for ``run_id`` in a transaction of its own, so
    that shards write in parallel (on Dask workers: straight to the database); :func:`write`
    publishes them all at once. Returns the batch without its rows."""
    batch = forecast(engine, settings, as_of, units, lineage=lineage)
    with engine.begin() as conn:
        n = stage_forecasts(conn, run_id, batch.rows)
    return ForecastBatch(as_of, [], batch.skipped, batch.versions, batch.tickers, n)


def write(
    engine: Engine, run_id: str, batch: ForecastBatch, outcomes: Sequence[ScopeOutcome]
) -> WriteResult:
    """Commit all of a run's forecasts (in the batch, and staged by its shards) and its
    completion record in one transaction, and empty its stage."""
    with engine.begin() as conn:
        rows = list(batch.rows)
        if batch.n_staged:
            staged = staged_rows(conn, run_id)
            if len(staged) != batch.n_staged:
                raise RuntimeError(
                    f"run {run_id}: {len(staged)} forecast rows staged, its shards reported "
                    f"{batch.n_staged}; rerun the day with --rerun"
                )
            rows += staged
        result = write_forecasts(conn, run_id, rows)
        clear_staging(conn, run_id)
        actions = [o.action for o in outcomes]
        runs.finish_run(
            conn,
            run_id,
            status="success",
            decision=max(actions, key=lambda a: {"keep": 0, "finetune": 1, "retrain": 2}[a])
            if actions
            else None,
            model_version_id=next(iter(batch.versions.values()), None)
            if len(batch.versions) == 1
            else None,
            n_forecast=len(batch.tickers),
            n_skipped=len(batch.skipped),
            counts={
                "rows": len(rows),
                "inserted": result.inserted,
                "replaced": result.replaced,
                "unchanged": result.unchanged,
                "versions": batch.versions,
            },
        )
    return result


def fail_run(engine: Engine, run_id: str, error: BaseException) -> None:
    with engine.begin() as conn:
        clear_staging(conn, run_id)
        runs.finish_run(conn, run_id, status="failed", error=f"{type(error).__name__}: {error}")


def open_run(
    engine: Engine,
    as_of: dt.date,
    *,
    lineage: str,
    kind: str,
    redo: bool = False,
    flow_run_id: str | None = None,
) -> RunSummary | str:
    """Start a run for ``as_of`` and return its id — or, when that day is already complete in
    this lineage and ``redo`` is not set, the summary saying so (a rerun writes nothing).
    Call it under the lineage's :func:`scope_lock`."""
    if not redo:
        with engine.connect() as conn:
            done = runs.completed_run(conn, as_of, lineage)
        if done is not None:
            return RunSummary(
                done.run_id,
                as_of,
                lineage,
                "already-complete",
                message=(
                    f"as of {as_of} was already completed by run {done.run_id}; nothing written "
                    "(use --rerun to recompute)"
                ),
            )
    # Rows staged by an earlier run of this lineage are left over from a process that died
    # before publishing or failing it. On Postgres the lineage lock guarantees no other run of
    # the lineage is in flight; SQLite takes no such lock, so there a run still marked running
    # keeps its rows for a day.
    pr = pipeline_runs.c
    earlier = select(pr.run_id).where(pr.lineage == lineage)
    if engine.dialect.name != "postgresql":
        stale = runs.utcnow() - dt.timedelta(days=1)
        earlier = earlier.where((pr.status != "running") | (pr.started_at < stale))
    with engine.begin() as conn:
        conn.execute(delete(forecast_staging).where(forecast_staging.c.run_id.in_(earlier)))
    return runs.start_run(engine, as_of, kind=kind, lineage=lineage, flow_run_id=flow_run_id)


def finished_summary(
    engine: Engine,
    run_id: str,
    as_of: dt.date,
    lineage: str,
    outcomes: list[ScopeOutcome],
    batch: ForecastBatch,
    written: WriteResult,
) -> RunSummary:
    """The summary of a committed run, with its next-day forecasts read back from the table."""
    with engine.connect() as conn:
        nd = next_day_forecasts(conn, as_of, version_ids=list(batch.versions.values()))
    return RunSummary(
        run_id,
        as_of,
        lineage,
        "success",
        outcomes,
        n_forecast_rows=batch.n_rows,
        tickers_forecast=batch.tickers,
        skipped=batch.skipped,
        written=written,
        next_day=nd,
    )


def run_pipeline(
    engine: Engine,
    settings: Settings,
    as_of: dt.date | None = None,
    *,
    today: dt.date | None = None,
    lineage: str = "live",
    kind: str = "daily",
    force_retrain: bool = False,
    rerun: bool = False,
    tickers: Sequence[str] | None = None,
    flow_run_id: str | None = None,
    on_step: Callable[[str], None] | None = None,
) -> RunSummary:
    """Check, decide, refit or keep, forecast and write, for one ``as_of`` (no Prefect).

    A second call for an ``as_of`` already completed in the same lineage does nothing and says
    so, unless ``rerun`` (or ``force_retrain``) is set.
    """
    step = on_step or (lambda name: log.debug("step %s", name))
    with engine.connect() as conn:
        names = universe(conn, settings, tickers)
    if as_of is None:
        as_of = resolve_as_of(engine, today or shanghai_today(), names)
        if as_of is None:
            return RunSummary(
                None,
                None,
                lineage,
                "no-data",
                message="no prices in the database; run `forecasting ingest` first",
            )
    with scope_lock(engine, f"pipeline:{lineage}"):
        opened = open_run(
            engine,
            as_of,
            lineage=lineage,
            kind=kind,
            redo=rerun or force_retrain,
            flow_run_id=flow_run_id,
        )
        if isinstance(opened, RunSummary):
            return opened
        run_id = opened
        try:
            units = scope_units(settings, names)
            outcomes = []
            for unit, unit_tickers in units.items():
                step(f"check {unit}")
                chk = check_scope(
                    engine,
                    settings,
                    as_of,
                    scope_name(lineage, unit),
                    unit_tickers,
                    force_retrain=force_retrain,
                )
                step(f"{chk.action} {unit}")
                outcomes.append(apply_decision(engine, settings, as_of, chk, run_id=run_id))
            step("forecast")
            batch = forecast(engine, settings, as_of, units, lineage=lineage)
            step("write")
            written = write(engine, run_id, batch, outcomes)
        except BaseException as exc:
            fail_run(engine, run_id, exc)
            raise
    return finished_summary(engine, run_id, as_of, lineage, outcomes, batch, written)


def summary_json(summary: RunSummary) -> str:
    return json.dumps(
        {
            "run_id": summary.run_id,
            "as_of": summary.as_of,
            "status": summary.status,
            "decision": summary.decision,
            "forecast": len(summary.tickers_forecast),
            "skipped": len(summary.skipped),
        },
        default=str,
    )


def train(
    engine: Engine,
    settings: Settings,
    *,
    through: dt.date | None = None,
    finetune: bool = False,
    tickers: Sequence[str] | None = None,
    lineage: str = "live",
) -> list[ScopeOutcome]:
    """Train now (``forecasting train``): a full retrain, or a fine-tune of the active version.

    The same champion/challenger rule as the daily run applies, and the decision is recorded
    in ``model_checks`` with the reason ``manual``.
    """
    with engine.connect() as conn:
        names = universe(conn, settings, tickers)
    cutoff = through or resolve_as_of(engine, dt.date.max, names)
    if cutoff is None:
        raise ValueError("no prices in the database; run `forecasting ingest` first")
    outcomes = []
    with scope_lock(engine, f"pipeline:{lineage}"):
        for unit, unit_tickers in scope_units(settings, names).items():
            scope = scope_name(lineage, unit)
            with engine.connect() as conn:
                info = registry.active_version(conn, scope)
            action = Action.FINETUNE if finetune and info is not None else Action.RETRAIN
            check = ScopeCheck(
                scope=scope,
                tickers=tuple(unit_tickers),
                version_id=info.id if info else None,
                trained_through=info.trained_through if info else None,
                check_window=settings.policy.check_window,
                rmse=math.nan,
                naive_rmse=math.nan,
                n=0,
                model_age_days=None,
                action=action.value,
                reason=f"manual: forecasting train --{'finetune' if finetune else 'full'}",
                threshold=settings.policy.rel_threshold,
                breached=False,
            )
            outcomes.append(apply_decision(engine, settings, cutoff, check, run_id=None))
    return outcomes
