"""The drift check: score a scope's active model on the newest trading days it has not seen, and
let the retrain policy decide."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from forecasting.data.prices import load_bars
from forecasting.model import registry
from forecasting.model.inference import score
from forecasting.model.metrics import ratio_to_naive
from forecasting.model.registry import CheckpointError, VersionInfo
from forecasting.model.trained_model import TrainedModel
from forecasting.model.windows import SeriesLike
from forecasting.pipeline.config import RunSettings
from forecasting.pipeline.retrain_policy import (
    Action,
    CheckNumbers,
    Trigger,
    decide,
)
from forecasting.pipeline.scopes import (
    lookback_start,
)

log = logging.getLogger(__name__)


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
    n: int  # errors scored (tickers x days x horizons)
    model_age_days: int | None
    action: Action
    reason: str
    threshold: float  # of the trigger that fired
    breached: bool
    triggered_by: Trigger = Trigger.WITHIN
    baseline_rmse: float = math.nan  # the model's own validation RMSE, same units as rmse
    unseen_days: int | None = None  # trading days the check could score
    # A run as of a day before the active model's cutoff: it forecasts with the version that
    # was active then, or trains one through that day that never becomes active.
    point_in_time: bool = False

    @property
    def ratio(self) -> float:
        return ratio_to_naive(self.rmse, self.naive_rmse) if self.n else math.nan


def check_scope(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    scope: str,
    tickers: Sequence[str],
    *,
    force_retrain: bool = False,
) -> ScopeCheck:
    """Score the scope's active model on the newest ``check_window`` trading days after its
    ``trained_through`` (out of sample), and decide what to do.

    When the active model was trained past ``as_of`` (a rerun of a past day), nothing is
    scored: see :func:`point_in_time_check`. When the active model's checkpoint is missing or
    corrupt, that version is retired with the reason and the scope retrains from scratch."""
    policy = settings.policy
    with engine.connect() as conn:
        info = registry.active_version(conn, scope)
    if info is not None and info.trained_through > as_of:
        return point_in_time_check(engine, settings, as_of, scope, tickers, info, force_retrain)
    model, broken = load_or_retire(engine, info)
    if model is None:
        info = None
    with engine.connect() as conn:
        numbers = CheckNumbers(has_model=False)
        # Evidence counts from the last refit attempt: when a challenger trained through a
        # later day was rejected, the active model was re-validated on that day, so its age and
        # its check window restart there (otherwise a rejected refit would be retried daily).
        revalidated: dt.date | None = None
        if info is not None and model is not None:
            last = registry.latest_attempt(conn, scope)
            if last is not None and last.trained_through > info.trained_through:
                revalidated = last.trained_through
            evidence_after = revalidated or info.trained_through
            start = lookback_start(
                info.trained_through, model.config.input_len + model.config.horizon
            )
            series = load_bars(conn, tickers=list(tickers), through=as_of, start=start)
            s = score(
                model, series, after=evidence_after, through=as_of, window=policy.check_window
            )
            numbers = CheckNumbers(
                has_model=True,
                rmse=s.rmse,
                naive_rmse=s.naive_rmse,
                n=s.n,
                model_age_days=(as_of - evidence_after).days,
                baseline_rmse=float(model.calibration.get(BASELINE_KEY, math.nan)),
                unseen_days=_unseen_days(series, evidence_after),
                revalidated_at=revalidated,
            )
    decision = decide(numbers, policy, force_retrain=force_retrain)
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
        action=decision.action,
        reason=f"{broken}; {decision.reason}" if broken else decision.reason,
        threshold=decision.threshold,
        breached=decision.breached,
        triggered_by=decision.trigger,
        baseline_rmse=numbers.baseline_rmse,
        unseen_days=numbers.unseen_days,
    )


def load_or_retire(engine: Engine, info: VersionInfo | None) -> tuple[TrainedModel | None, str]:
    """Load the version ``info`` names; when its checkpoint is missing or corrupt, retire it
    with the error as its ``retired_reason`` (committed at once: it is unusable whatever this
    run does next) and return ``None`` with a sentence saying so."""
    if info is None:
        return None, ""
    with engine.connect() as conn:
        try:
            return registry.load_model(conn, info.id), ""
        except CheckpointError as exc:
            why = str(exc).split("; ")[0]
    with engine.begin() as conn:
        registry.retire_broken(conn, info.id, why)
    log.warning("%s; retired it, the scope %s retrains from scratch", why, info.scope)
    return None, f"{why}: version {info.id} retired"


def point_in_time_check(
    engine: Engine,
    settings: RunSettings,
    as_of: dt.date,
    scope: str,
    tickers: Sequence[str],
    active: VersionInfo,
    force_retrain: bool,
) -> ScopeCheck:
    """The check of a run as of a day before the active model's cutoff: keep the version that
    was the scope's model then (:func:`~forecasting.model.registry.active_version_at`), else
    (none, or ``force_retrain``) train one through ``as_of``. Nothing is scored, and the live
    champion is left alone: the future must not leak into the day, nor the past replace it."""
    then = _loadable_at(engine, scope, as_of)
    after = (
        f"the active version {active.id} was trained through {active.trained_through}, "
        f"after {as_of}"
    )
    common: dict[str, Any] = dict(
        scope=scope,
        tickers=tuple(tickers),
        check_window=settings.policy.check_window,
        rmse=math.nan,
        naive_rmse=math.nan,
        n=0,
        model_age_days=None,
        threshold=math.nan,
        breached=False,
        point_in_time=True,
    )
    if then is not None and not force_retrain:
        return ScopeCheck(
            **common,
            version_id=then.id,
            trained_through=then.trained_through,
            action=Action.KEEP,
            reason=f"point-in-time: {after}; forecast with version {then.id}, this lineage's "
            f"model as of {as_of} (trained through {then.trained_through})",
            triggered_by=Trigger.WITHIN,
        )
    why = "forced by flag" if force_retrain else f"no version was this lineage's model by {as_of}"
    return ScopeCheck(
        **common,
        version_id=None,
        trained_through=None,
        action=Action.RETRAIN,
        reason=f"point-in-time: {after}; {why}, so a model trained through {as_of} forecasts "
        "the day (it never becomes active)",
        triggered_by=Trigger.FORCED if force_retrain else Trigger.NO_MODEL,
    )


def _loadable_at(engine: Engine, scope: str, as_of: dt.date) -> VersionInfo | None:
    """The scope's point-in-time version as of ``as_of`` whose checkpoint loads (a broken one
    is retired with the reason, and the one before it is tried)."""
    while True:
        with engine.connect() as conn:
            then = registry.active_version_at(conn, scope, as_of)
        if then is None:
            return None
        model, _ = load_or_retire(engine, then)
        if model is not None:
            return then


BASELINE_KEY = "check_baseline_rmse"


def validation_baseline(
    model: TrainedModel, series: Mapping[str, SeriesLike], through: dt.date
) -> float:
    """The model's RMSE on its own validation span (the last ``val_days`` trading days up to
    ``through``), in exactly the units of the drift check, so the two can be compared."""
    start = validation_start(series, through, model.config.val_days)
    if start is None:
        return math.nan
    return score(model, series, after=start, through=through, window=model.config.val_days).rmse


def _unseen_days(series: Mapping[str, SeriesLike], after: dt.date) -> int:
    dates: set[dt.date] = set()
    for s in series.values():
        dates.update(d for d in s.index if d > after)
    return len(dates)


def validation_start(
    series: Mapping[str, SeriesLike], as_of: dt.date, val_days: int
) -> dt.date | None:
    """The day before the last ``val_days`` trading days up to ``as_of`` (the span a model
    validates on), or ``None`` when the series are shorter."""
    dates = sorted({d for s in series.values() for d in s.index if d <= as_of})
    if len(dates) <= val_days:
        return None
    start: dt.date = dates[-(val_days + 1)]
    return start
