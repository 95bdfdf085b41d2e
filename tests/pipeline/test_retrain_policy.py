"""The retrain decision is a pure function; these tables are its specification."""

from __future__ import annotations

import math

import pytest

from forecasting.pipeline.retrain_policy import (
    Action,
    CheckNumbers,
    challenger_wins,
    decide,
    finetune_insufficient,
)
from forecasting.settings import PolicySettings

REL = PolicySettings(
    rel_threshold=1.05, abs_threshold=None, degradation_threshold=None, max_age_days=90
)
ABS = PolicySettings(
    rel_threshold=1e9, abs_threshold=1.2, degradation_threshold=None, max_age_days=90
)
BOTH = PolicySettings(
    rel_threshold=1.05, abs_threshold=1.2, degradation_threshold=None, max_age_days=90
)
DEG = PolicySettings(
    rel_threshold=1.05, abs_threshold=None, degradation_threshold=1.5, max_age_days=90
)


@pytest.mark.parametrize(
    ("numbers", "policy", "force", "action", "reason_part"),
    [
        (CheckNumbers(False), REL, False, Action.RETRAIN, "no active model"),
        (CheckNumbers(True, 1.0, 1.0, 50, 10), REL, True, Action.RETRAIN, "forced"),
        (CheckNumbers(True, 1.0, 1.0, 50, 91), REL, False, Action.RETRAIN, "91 days old"),
        (CheckNumbers(True, 1.0, 1.0, 50, 90), REL, False, Action.KEEP, "within threshold"),
        (CheckNumbers(True, 1.04, 1.0, 50, 10), REL, False, Action.KEEP, "within threshold"),
        (CheckNumbers(True, 1.06, 1.0, 50, 10), REL, False, Action.FINETUNE, "relative threshold"),
        (CheckNumbers(True, 1.3, 1.0, 0, 10), REL, False, Action.KEEP, "no unseen"),
        (CheckNumbers(True, 1.1, 2.0, 50, 10), ABS, False, Action.KEEP, "within threshold"),
        (CheckNumbers(True, 1.3, 2.0, 50, 10), ABS, False, Action.FINETUNE, "absolute threshold"),
        (CheckNumbers(True, 1.3, 2.0, 50, 10), BOTH, False, Action.FINETUNE, "absolute"),
        (CheckNumbers(True, 1.1, 1.0, 50, 10), BOTH, False, Action.FINETUNE, "relative"),
        # Degradation: check RMSE against the model's own validation RMSE.
        (
            CheckNumbers(True, 1.4, 1.4, 50, 10, 1.0),
            DEG,
            False,
            Action.KEEP,
            "1.40x its validation",
        ),
        (CheckNumbers(True, 1.6, 1.6, 50, 10, 1.0), DEG, False, Action.FINETUNE, "degradation"),
        (CheckNumbers(True, 1.6, 1.6, 50, 10), DEG, False, Action.KEEP, "within threshold"),
    ],
)
def test_decide(
    numbers: CheckNumbers, policy: PolicySettings, force: bool, action: Action, reason_part: str
) -> None:
    """Keep below the threshold, fine-tune above it, retrain when forced, missing or too old."""
    d = decide(numbers, policy, force_retrain=force)
    assert d.action is action
    assert reason_part in d.reason
    assert d.threshold == policy.rel_threshold


@pytest.mark.parametrize(
    ("val_rmse", "naive", "insufficient"),
    [(0.9, 1.0, False), (1.04, 1.0, False), (1.2, 1.0, True), (math.nan, 1.0, True)],
)
def test_finetune_insufficient(val_rmse: float, naive: float, insufficient: bool) -> None:
    """A fine-tune that leaves validation RMSE above the threshold calls for a full retrain."""
    assert finetune_insufficient(val_rmse, naive, REL) is insufficient


@pytest.mark.parametrize(
    ("challenger", "champion", "wins"),
    [
        (0.95, 0.99, True),
        (0.99, 0.99, False),
        (1.01, 0.99, False),
        (0.99, math.nan, True),
        (math.nan, 0.99, False),
    ],
)
def test_challenger_wins(challenger: float, champion: float, wins: bool) -> None:
    """A new version becomes active only if it strictly beats the active one."""
    assert challenger_wins(challenger, champion) is wins


@pytest.mark.parametrize(
    ("challenger", "champion", "wins"), [(1.0, 1.0, True), (0.99, 1.0, True), (1.01, 1.0, False)]
)
def test_a_tie_goes_to_the_challenger_when_the_champion_due(
    challenger: float, champion: float, wins: bool
) -> None:
    """Keeping a breached model on a tie would only trigger the same refit tomorrow."""
    assert challenger_wins(challenger, champion, champion_due=True) is wins


def test_ratio_is_nan_without_errors() -> None:
    """A check with no scored errors has no ratio."""
    assert math.isnan(CheckNumbers(True, 1.0, 1.0, 0).ratio)
    assert CheckNumbers(True, 1.0, 2.0, 3).ratio == 0.5
