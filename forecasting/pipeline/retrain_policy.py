"""The retrain policies: pure functions from check numbers to a decision.

Two policies: the drift policy (:func:`decide`: thresholds on the check's RMSE, a minimum of
unseen days, a maximum age) that the daily run applies, and the calendar policy
(:func:`calendar_due`: retrain every N trading days, qlib's rolling default) that a backfill can
add for comparison. Nothing here touches the database or a model; the pipeline records every
input and verdict in ``model_checks`` (the trigger that fired, its threshold, the baseline RMSE,
the model's age and the number of scored days as columns) so users can query why a model was
kept, fine-tuned or retrained.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from enum import StrEnum

from forecasting.model.metrics import ratio_to_naive
from forecasting.settings import PolicySettings


class Action(StrEnum):
    KEEP = "keep"
    FINETUNE = "finetune"
    RETRAIN = "retrain"


class Trigger(StrEnum):
    """What decided a check, as ``model_checks.triggered_by`` records it."""

    FORCED = "forced"  # --force-retrain, or the calendar policy
    MANUAL = "manual"  # forecasting train
    NO_MODEL = "no-model"
    AGE = "age"  # older than max_age_days
    TOO_FEW_DAYS = "too-few-days"  # fewer than min_check_days unseen days: nothing to judge
    ABSOLUTE = "absolute"  # RMSE above abs_threshold
    DEGRADATION = "degradation"  # RMSE above degradation_threshold x its validation RMSE
    RELATIVE = "relative"  # RMSE / naive above rel_threshold
    WITHIN = "within"  # every threshold held


@dataclass(frozen=True)
class CheckNumbers:
    """What the drift check measured for one scope; ``n`` is the number of scored errors."""

    has_model: bool
    rmse: float = math.nan
    naive_rmse: float = math.nan
    n: int = 0
    model_age_days: int | None = None
    baseline_rmse: float = math.nan  # the model's RMSE on its own validation span, same units
    unseen_days: int | None = None  # trading days with prices since the evidence start
    revalidated_at: dt.date | None = None  # cutoff of a rejected challenger, if it restarted

    @property
    def ratio(self) -> float:
        return ratio_to_naive(self.rmse, self.naive_rmse) if self.n else math.nan


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    threshold: float  # the threshold of the trigger that fired (else the relative one)
    breached: bool
    trigger: Trigger = Trigger.WITHIN


def _fired(
    rmse: float, naive_rmse: float, policy: PolicySettings, baseline_rmse: float = math.nan
) -> list[tuple[Trigger, float, str]]:
    """Every configured threshold the measured RMSE crosses: trigger, threshold, sentence."""
    fired = []
    if policy.abs_threshold is not None and rmse > policy.abs_threshold:
        fired.append(
            (
                Trigger.ABSOLUTE,
                policy.abs_threshold,
                f"RMSE {rmse:.4f} > absolute threshold {policy.abs_threshold:.4f}",
            )
        )
    if (
        policy.degradation_threshold is not None
        and baseline_rmse > 0
        and rmse / baseline_rmse > policy.degradation_threshold
    ):
        fired.append(
            (
                Trigger.DEGRADATION,
                policy.degradation_threshold,
                f"RMSE {rmse:.4f} is {rmse / baseline_rmse:.2f}x its validation RMSE "
                f"{baseline_rmse:.4f} > degradation threshold {policy.degradation_threshold:.2f}",
            )
        )
    ratio = ratio_to_naive(rmse, naive_rmse)  # NaN compares False: no naive, no trigger
    if policy.rel_threshold is not None and ratio > policy.rel_threshold:
        fired.append(
            (
                Trigger.RELATIVE,
                policy.rel_threshold,
                f"RMSE/naive {ratio:.3f} > relative threshold {policy.rel_threshold:.3f}",
            )
        )
    return fired


def breaches(
    rmse: float, naive_rmse: float, policy: PolicySettings, baseline_rmse: float = math.nan
) -> tuple[bool, str]:
    """Whether the measured RMSE crosses any configured threshold, and a sentence why."""
    fired = _fired(rmse, naive_rmse, policy, baseline_rmse)
    return bool(fired), "; ".join(why for _, _, why in fired)


def decide(check: CheckNumbers, policy: PolicySettings, *, force_retrain: bool = False) -> Decision:
    """Keep below the thresholds (or with fewer than ``min_check_days`` unseen days to judge
    by), fine-tune above them, retrain from scratch when forced, when there is no model, or
    when the model is older than ``max_age_days``. When a rejected challenger restarted the
    clocks (``revalidated_at``), the reason says so."""
    threshold = policy.rel_threshold
    if force_retrain:
        return Decision(
            Action.RETRAIN, "full retrain forced by flag", threshold, False, Trigger.FORCED
        )
    if not check.has_model:
        return Decision(Action.RETRAIN, "no active model", threshold, False, Trigger.NO_MODEL)
    since = (
        f" (counted from the rejected refit trained through {check.revalidated_at})"
        if check.revalidated_at is not None
        else ""
    )
    if check.model_age_days is not None and check.model_age_days > policy.max_age_days:
        return Decision(
            Action.RETRAIN,
            f"model is {check.model_age_days} days old > max_age_days {policy.max_age_days}"
            + since,
            float(policy.max_age_days),
            False,
            Trigger.AGE,
        )
    if check.n == 0 or (
        check.unseen_days is not None and check.unseen_days < policy.min_check_days
    ):
        reason = f"fewer than {policy.min_check_days} unseen trading days since training"
        if check.revalidated_at is not None:
            reason = (
                f"fewer than {policy.min_check_days} unseen trading days since a challenger "
                f"trained through {check.revalidated_at} was rejected"
            )
        return Decision(
            Action.KEEP, reason, float(policy.min_check_days), False, Trigger.TOO_FEW_DAYS
        )
    fired = _fired(check.rmse, check.naive_rmse, policy, check.baseline_rmse)
    if fired:
        trigger, limit, _ = fired[0]
        why = "; ".join(w for _, _, w in fired)
        return Decision(Action.FINETUNE, why + since, limit, True, trigger)
    detail = f"RMSE/naive {check.ratio:.3f} within threshold {threshold:.3f}"
    if check.baseline_rmse > 0:
        detail += f"; RMSE {check.rmse:.4f} is {check.rmse / check.baseline_rmse:.2f}x its validation RMSE"
    return Decision(Action.KEEP, detail, threshold, False, Trigger.WITHIN)


def calendar_due(trading_days_since_refit: int | None, every: int | None) -> bool:
    """The calendar policy: a full retrain is due every ``every`` trading days (counted from
    the last refit; with none yet, the drift policy's "no model" applies)."""
    return (
        bool(every)
        and trading_days_since_refit is not None
        and trading_days_since_refit >= (every or 0)
    )


def finetune_insufficient(val_rmse: float, val_naive_rmse: float, policy: PolicySettings) -> bool:
    """A fine-tune that does not bring validation RMSE back under the threshold calls for a
    full retrain."""
    if math.isnan(val_rmse):
        return True
    return breaches(val_rmse, val_naive_rmse, policy)[0]


def challenger_wins(
    challenger_ratio: float,
    champion_ratio: float,
    *,
    champion_due: bool = False,
    challenger_interval: float = math.nan,
    champion_interval: float = math.nan,
) -> bool:
    """A new version becomes active only if its validation error (as a ratio to naive on the
    same windows, so that both are in the same units) beats the active one's. When the active
    model is due for replacement (it breached its threshold, or a full retrain was scheduled
    by age or calendar), a tie goes to the challenger: it was fitted on fresher data.

    On real closes both point forecasts are usually persistence, so the ratios tie at 1.000
    (within :data:`RATIO_TIE`); then the interval (Winkler) scores on the same windows decide,
    when both are known, with the same tie rule."""
    if math.isnan(challenger_ratio):
        return False
    if math.isnan(champion_ratio):
        return True
    tied = abs(challenger_ratio - champion_ratio) <= RATIO_TIE
    if tied and not (math.isnan(challenger_interval) or math.isnan(champion_interval)):
        if champion_due:
            return challenger_interval <= champion_interval + 1e-9
        return challenger_interval < champion_interval
    if champion_due:
        return challenger_ratio <= champion_ratio + 1e-9
    return challenger_ratio < champion_ratio


RATIO_TIE = 1e-4  # RMSE ratios this close are a tie: the interval score decides
