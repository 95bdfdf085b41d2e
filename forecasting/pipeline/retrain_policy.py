"""The retrain policy: pure functions from check numbers to a decision.

Nothing here touches the database or a model; the pipeline records every input and verdict in
``model_checks`` so users can query why a model was kept, fine-tuned or retrained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from forecasting.settings import PolicySettings


class Action(StrEnum):
    KEEP = "keep"
    FINETUNE = "finetune"
    RETRAIN = "retrain"


@dataclass(frozen=True)
class CheckNumbers:
    """What the drift check measured for one scope; ``n`` is the number of scored errors."""

    has_model: bool
    rmse: float = math.nan
    naive_rmse: float = math.nan
    n: int = 0
    model_age_days: int | None = None
    baseline_rmse: float = math.nan  # the model's RMSE on its own validation span, same units

    @property
    def ratio(self) -> float:
        if self.n == 0 or not self.naive_rmse or math.isnan(self.naive_rmse):
            return math.nan
        return self.rmse / self.naive_rmse


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    threshold: float  # the relative threshold in force (ratio to naive), for the record
    breached: bool


def breaches(
    rmse: float, naive_rmse: float, policy: PolicySettings, baseline_rmse: float = math.nan
) -> tuple[bool, str]:
    """Whether the measured RMSE crosses any configured threshold, and a sentence why."""
    reasons = []
    if policy.abs_threshold is not None and rmse > policy.abs_threshold:
        reasons.append(f"RMSE {rmse:.4f} > absolute threshold {policy.abs_threshold:.4f}")
    if (
        policy.degradation_threshold is not None
        and baseline_rmse > 0
        and rmse / baseline_rmse > policy.degradation_threshold
    ):
        reasons.append(
            f"RMSE {rmse:.4f} is {rmse / baseline_rmse:.2f}x its validation RMSE "
            f"{baseline_rmse:.4f} > degradation threshold {policy.degradation_threshold:.2f}"
        )
    if naive_rmse > 0 and policy.rel_threshold is not None:
        ratio = rmse / naive_rmse
        if ratio > policy.rel_threshold:
            reasons.append(
                f"RMSE/naive {ratio:.3f} > relative threshold {policy.rel_threshold:.3f}"
            )
    return bool(reasons), "; ".join(reasons)


def decide(check: CheckNumbers, policy: PolicySettings, *, force_retrain: bool = False) -> Decision:
    """Keep below the threshold, fine-tune above it, retrain from scratch when forced,
    when there is no model, or when the model is older than ``max_age_days``."""
    threshold = policy.rel_threshold
    if force_retrain:
        return Decision(Action.RETRAIN, "full retrain forced by flag", threshold, False)
    if not check.has_model:
        return Decision(Action.RETRAIN, "no active model", threshold, False)
    if check.model_age_days is not None and check.model_age_days > policy.max_age_days:
        return Decision(
            Action.RETRAIN,
            f"model is {check.model_age_days} days old > max_age_days {policy.max_age_days}",
            threshold,
            False,
        )
    if check.n == 0:
        return Decision(Action.KEEP, "no unseen trading days since training", threshold, False)
    breached, why = breaches(check.rmse, check.naive_rmse, policy, check.baseline_rmse)
    if breached:
        return Decision(Action.FINETUNE, why, threshold, True)
    detail = f"RMSE/naive {check.ratio:.3f} within threshold {threshold:.3f}"
    if check.baseline_rmse > 0:
        detail += f"; RMSE {check.rmse:.4f} is {check.rmse / check.baseline_rmse:.2f}x its validation RMSE"
    return Decision(Action.KEEP, detail, threshold, False)


def finetune_insufficient(val_rmse: float, val_naive_rmse: float, policy: PolicySettings) -> bool:
    """A fine-tune that does not bring validation RMSE back under the threshold calls for a
    full retrain."""
    if math.isnan(val_rmse):
        return True
    return breaches(val_rmse, val_naive_rmse, policy)[0]


def challenger_wins(
    challenger_ratio: float, champion_ratio: float, *, champion_due: bool = False
) -> bool:
    """A new version becomes active only if its validation error (as a ratio to naive on the
    same windows, so that both are in the same units) beats the active one's. When the active
    model is due for replacement (it breached its threshold, or a full retrain was scheduled
    by age or calendar), a tie goes to the challenger: it was fitted on fresher data."""
    if math.isnan(challenger_ratio):
        return False
    if math.isnan(champion_ratio):
        return True
    if champion_due:
        return challenger_ratio <= champion_ratio + 1e-9
    return challenger_ratio < champion_ratio
