"""Refit a scope (fine-tune or full retrain) under champion/challenger, and the manual
``forecasting train``."""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from sqlalchemy import insert
from sqlalchemy.engine import Connection, Engine

from forecasting.data.locks import scope_lock
from forecasting.data.prices import load_bars
from forecasting.data.schema import model_checks
from forecasting.errors import InputError
from forecasting.model import registry
from forecasting.model.inference import score
from forecasting.model.lstm import ModelConfig
from forecasting.model.metrics import ratio_to_naive
from forecasting.model.trained_model import TrainedModel
from forecasting.model.training import fit
from forecasting.pipeline import runs
from forecasting.pipeline.check import (
    BASELINE_KEY,
    ScopeCheck,
    load_or_retire,
    validation_baseline,
    validation_start,
)
from forecasting.pipeline.config import RunSettings
from forecasting.pipeline.retrain_policy import (
    Action,
    Trigger,
    challenger_wins,
    finetune_insufficient,
)
from forecasting.pipeline.scopes import (
    lookback_start,
    resolve_as_of,
    scope_name,
    scope_units,
    scoped_lineage,
    universe,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScopeOutcome:
    """What happened to one scope in one run (picklable); mirrors its ``model_checks`` row."""

    scope: str
    as_of: dt.date
    version_before: int | None
    action: Action
    reason: str
    rmse: float
    naive_rmse: float
    threshold: float
    check_window: int
    triggered_by: Trigger = Trigger.WITHIN
    baseline_rmse: float = math.nan
    model_age_days: int | None = None
    n_scored: int = 0
    new_version_id: int | None = None
    candidate_ratio: float = math.nan
    champion_ratio: float = math.nan
    promoted: bool | None = None
    train_seconds: float = 0.0
    active_version_id: int | None = None
    candidate_rmse: float = math.nan
    point_in_time: bool = False  # see ScopeCheck.point_in_time: its model never goes live


def _model_config(settings: RunSettings) -> ModelConfig:
    return ModelConfig.from_settings(settings.model)


def _training_series(
    conn: Connection, settings: RunSettings, tickers: Sequence[str], as_of: dt.date
) -> dict[str, pd.DataFrame]:
    cfg = settings.model
    start = lookback_start(as_of, cfg.history_days + cfg.input_len + cfg.horizon)
    return load_bars(conn, tickers=list(tickers), through=as_of, start=start)


def apply_decision(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    check: ScopeCheck,
) -> ScopeOutcome:
    """Carry out the decision for one scope, up to but not including its commit.

    keep: nothing to do. finetune: warm-start from the active version; if that does not bring
    validation RMSE back under the threshold, retrain from scratch. The refitted model is saved
    as a ``candidate`` that nothing reads as active; the outcome says whether it wins (its
    validation ratio to naive beats the active model's on the same recent windows). Nothing
    changes what other runs see until :func:`commit_outcome` runs in the run's publish
    transaction: a run that fails later leaves the champion and the check records as they were.
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
        triggered_by=check.triggered_by,
        baseline_rmse=check.baseline_rmse,
        model_age_days=check.model_age_days,
        n_scored=check.n,
        point_in_time=check.point_in_time,
    )
    if check.action == Action.KEEP:
        return ScopeOutcome(
            **base, action=Action.KEEP, reason=check.reason, active_version_id=check.version_id
        )

    config = _model_config(settings)
    with engine.connect() as conn:
        series = _training_series(conn, settings, check.tickers, as_of)
        info = registry.get_version(conn, check.version_id) if check.version_id else None
    # A full retrain never needs the champion: when its checkpoint is broken it is retired
    # with the reason and the candidate simply wins.
    active, broken = load_or_retire(engine, info)
    reason = f"{check.reason}; {broken}" if broken else check.reason
    action = Action(check.action)
    started = time.perf_counter()
    candidate: TrainedModel | None = None
    kind = "full"
    if action == Action.FINETUNE and active is not None:
        candidate = fit(series, active.config, as_of, init=active)
        kind = "finetune"
        if finetune_insufficient(candidate.val_rmse, candidate.val_naive_rmse, policy):
            reason += (
                f"; fine-tune left validation RMSE/naive at {candidate.val_ratio:.3f}, "
                "so retrained from scratch"
            )
            action = Action.RETRAIN
            candidate = None
    if candidate is None:
        candidate = fit(series, config, as_of)
        kind = "full"
    train_seconds = time.perf_counter() - started

    candidate.calibration[BASELINE_KEY] = validation_baseline(candidate, series, as_of)
    cand_ratio = candidate.val_ratio
    champ_ratio = math.nan
    champ_interval = cand_interval = math.nan
    if active is not None:
        val_after = validation_start(series, as_of, candidate.config.val_days)
        if val_after is not None:
            s = score(
                active, series, after=val_after, through=as_of, window=candidate.config.val_days
            )
            champ_ratio = s.ratio
            # Interval scores on the same windows break a tie of the ratios (both at 1.000).
            champ_interval = s.interval_score
            cand_interval = score(
                candidate, series, after=val_after, through=as_of, window=candidate.config.val_days
            ).interval_score
    # A full retrain (scheduled by age or calendar, forced, or after a failed fine-tune)
    # replaces a champion it ties: the challenger saw fresher data.
    promoted = not check.point_in_time and (
        active is None
        or challenger_wins(
            cand_ratio,
            champ_ratio,
            champion_due=check.breached or action is Action.RETRAIN,
            challenger_interval=cand_interval,
            champion_interval=champ_interval,
        )
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
    outcome = ScopeOutcome(
        **base,
        action=action,
        reason=reason,
        new_version_id=new_id,
        candidate_ratio=cand_ratio,
        champion_ratio=champ_ratio,
        promoted=promoted,
        train_seconds=train_seconds,
        active_version_id=new_id if promoted or check.point_in_time else check.version_id,
        candidate_rmse=candidate.val_rmse,
    )
    log.info("scope %s as of %s: %s (%s)", check.scope, as_of, action.value, reason)
    return outcome


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def commit_outcome(conn: Connection, run_id: str | None, o: ScopeOutcome) -> None:
    """Record one scope's decision in ``model_checks`` and apply it to the registry: the
    winning candidate becomes active (the champion retires), a losing one is ``rejected``.
    Call it inside the transaction that publishes the run."""
    if o.new_version_id is not None:
        if o.point_in_time:
            # Trained for a past day: kept as that day's model, never the live champion.
            registry.set_status(conn, o.new_version_id, "retired")
        elif o.promoted:
            registry.activate(conn, o.new_version_id)
        else:
            registry.set_status(conn, o.new_version_id, "rejected")
    conn.execute(
        insert(model_checks).values(
            run_id=run_id,
            as_of_date=o.as_of,
            scope=o.scope,
            model_version_id=o.version_before,
            check_window=o.check_window,
            rmse=_nan_to_none(o.rmse),
            naive_rmse=_nan_to_none(o.naive_rmse),
            ratio=_nan_to_none(ratio_to_naive(o.rmse, o.naive_rmse)),
            threshold=_nan_to_none(o.threshold),
            triggered_by=o.triggered_by,
            baseline_rmse=_nan_to_none(o.baseline_rmse),
            model_age_days=o.model_age_days,
            n_scored=o.n_scored,
            decision=o.action,
            reason=o.reason,
            new_version_id=o.new_version_id,
            candidate_rmse=_nan_to_none(o.candidate_rmse),
            promoted=o.promoted,
            train_seconds=o.train_seconds or None,
            created_at=runs.utcnow(),
        )
    )


def train(
    engine: Engine,
    settings: RunSettings,
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
        names = universe(conn, settings, tickers, day=through)
        lineage = scoped_lineage(conn, settings, lineage, tickers)  # a subset: its own models
    cutoff = through or resolve_as_of(engine, dt.date.max, names)
    if cutoff is None:
        raise InputError("no prices in the database; run `forecasting ingest` first")
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
                action=action,
                reason=f"manual: forecasting train --{'finetune' if finetune else 'full'}",
                threshold=settings.policy.rel_threshold,
                breached=False,
                triggered_by=Trigger.MANUAL,
            )
            outcome = apply_decision(engine, settings, cutoff, check)
            with engine.begin() as conn:
                commit_outcome(conn, None, outcome)
            outcomes.append(outcome)
    return outcomes
