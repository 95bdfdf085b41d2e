"""The drift check: score a scope's active model on the newest trading days it has not seen, and
let the retrain policy decide."""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
from sqlalchemy.engine import Engine

from forecasting.data.prices import load_closes
from forecasting.model import registry
from forecasting.model.inference import score
from forecasting.model.metrics import ratio_to_naive
from forecasting.model.trained_model import TrainedModel
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
            start = lookback_start(
                info.trained_through, model.config.input_len + model.config.horizon
            )
            series = load_closes(conn, tickers=list(tickers), through=as_of, start=start)
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
        reason=decision.reason,
        threshold=decision.threshold,
        breached=decision.breached,
        triggered_by=decision.trigger,
        baseline_rmse=numbers.baseline_rmse,
        unseen_days=numbers.unseen_days,
    )


BASELINE_KEY = "check_baseline_rmse"


def validation_baseline(
    model: TrainedModel, series: Mapping[str, pd.Series], through: dt.date
) -> float:
    """The model's RMSE on its own validation span (the last ``val_days`` trading days up to
    ``through``), in exactly the units of the drift check, so the two can be compared."""
    start = validation_start(series, through, model.config.val_days)
    if start is None:
        return math.nan
    return score(model, series, after=start, through=through, window=model.config.val_days).rmse


def _unseen_days(series: Mapping[str, pd.Series], after: dt.date) -> int:
    dates: set[dt.date] = set()
    for s in series.values():
        dates.update(d for d in s.index if d > after)
    return len(dates)


def validation_start(
    series: Mapping[str, pd.Series], as_of: dt.date, val_days: int
) -> dt.date | None:
    """The day before the last ``val_days`` trading days up to ``as_of`` (the span a model
    validates on), or ``None`` when the series are shorter."""
    dates = sorted({d for s in series.values() for d in s.index if d <= as_of})
    if len(dates) <= val_days:
        return None
    start: dt.date = dates[-(val_days + 1)]
    return start
