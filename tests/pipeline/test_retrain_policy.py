"""The retrain decision is a pure function; these tables are its specification."""

from __future__ import annotations

import datetime as dt
import math

import pytest

from forecasting.pipeline.retrain_policy import (
    Action,
    CheckNumbers,
    calendar_due,
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
    ("numbers", "policy", "force", "action", "reason_part", "trigger", "threshold"),
    [
        (CheckNumbers(False), REL, False, Action.RETRAIN, "no active model", "no-model", 1.05),
        (CheckNumbers(True, 1.0, 1.0, 50, 10), REL, True, Action.RETRAIN, "forced", "forced", 1.05),
        (
            CheckNumbers(True, 1.0, 1.0, 50, 91),
            REL,
            False,
            Action.RETRAIN,
            "91 days old",
            "age",
            90,
        ),
        (CheckNumbers(True, 1.0, 1.0, 50, 90), REL, False, Action.KEEP, "within", "within", 1.05),
        (CheckNumbers(True, 1.04, 1.0, 50, 10), REL, False, Action.KEEP, "within", "within", 1.05),
        (
            CheckNumbers(True, 1.06, 1.0, 50, 10),
            REL,
            False,
            Action.FINETUNE,
            "relative threshold",
            "relative",
            1.05,
        ),
        (
            CheckNumbers(True, 1.3, 1.0, 0, 10),
            REL,
            False,
            Action.KEEP,
            "fewer than 5",
            "too-few-days",
            5,
        ),
        (
            CheckNumbers(True, 1.3, 1.0, 50, 10, unseen_days=4),
            REL,
            False,
            Action.KEEP,
            "fewer than 5 unseen",
            "too-few-days",
            5,
        ),
        (CheckNumbers(True, 1.1, 2.0, 50, 10), ABS, False, Action.KEEP, "within", "within", 1e9),
        (
            CheckNumbers(True, 1.3, 2.0, 50, 10),
            ABS,
            False,
            Action.FINETUNE,
            "absolute threshold",
            "absolute",
            1.2,
        ),
        (
            CheckNumbers(True, 1.3, 2.0, 50, 10),
            BOTH,
            False,
            Action.FINETUNE,
            "absolute",
            "absolute",
            1.2,
        ),
        (
            CheckNumbers(True, 1.1, 1.0, 50, 10),
            BOTH,
            False,
            Action.FINETUNE,
            "relative",
            "relative",
            1.05,
        ),
        # Degradation: check RMSE against the model's own validation RMSE.
        (
            CheckNumbers(True, 1.4, 1.4, 50, 10, 1.0),
            DEG,
            False,
            Action.KEEP,
            "1.40x its validation",
            "within",
            1.05,
        ),
        (
            CheckNumbers(True, 1.6, 1.6, 50, 10, 1.0),
            DEG,
            False,
            Action.FINETUNE,
            "degradation",
            "degradation",
            1.5,
        ),
        (CheckNumbers(True, 1.6, 1.6, 50, 10), DEG, False, Action.KEEP, "within", "within", 1.05),
    ],
)
def test_decide(
    numbers: CheckNumbers,
    policy: PolicySettings,
    force: bool,
    action: Action,
    reason_part: str,
    trigger: str,
    threshold: float,
) -> None:
    """Keep below the thresholds (or with too few unseen days to judge), fine-tune above
    them, retrain when forced, missing or too old; the decision names the trigger that fired
    and that trigger's threshold, which is what ``model_checks`` records."""
    d = decide(numbers, policy, force_retrain=force)
    assert d.action is action
    assert reason_part in d.reason
    assert (d.trigger, d.threshold) == (trigger, threshold)


def test_a_rejected_refit_is_named_in_the_reason() -> None:
    """When a rejected challenger restarted the clocks, the reason says from when."""
    since = dt.date(2016, 8, 29)
    old = decide(CheckNumbers(True, 1.0, 1.0, 50, 91, revalidated_at=since), REL)
    cooling = decide(CheckNumbers(True, 1.0, 1.0, 50, 2, unseen_days=2, revalidated_at=since), REL)
    assert "counted from the rejected refit trained through 2016-08-29" in old.reason
    assert "challenger trained through 2016-08-29 was rejected" in cooling.reason


@pytest.mark.parametrize(
    ("since_refit", "every", "due"),
    [(None, 20, False), (19, 20, False), (20, 20, True), (50, None, False)],
)
def test_the_calendar_policy_retrains_every_n_trading_days(
    since_refit: int | None, every: int | None, due: bool
) -> None:
    """The second policy: a full retrain every N trading days after the last refit."""
    assert calendar_due(since_refit, every) is due


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


def test_tied_ratios_are_decided_by_the_interval_score() -> None:
    """Both at persistence (ratio 1.000): the challenger wins with the lower interval score,
    loses with a higher one, and a due champion loses an exact tie of both."""
    assert challenger_wins(1.0, 1.0, challenger_interval=2.9, champion_interval=3.0)
    assert not challenger_wins(1.0, 1.0, challenger_interval=3.1, champion_interval=3.0)
    assert not challenger_wins(1.0, 1.0, challenger_interval=3.0, champion_interval=3.0)
    assert challenger_wins(
        1.0, 1.0, champion_due=True, challenger_interval=3.0, champion_interval=3.0
    )
    # A real difference in the ratio still decides first.
    assert not challenger_wins(1.01, 1.0, challenger_interval=1.0, champion_interval=3.0)
