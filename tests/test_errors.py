"""Every error a person can fix derives from one base class, which the CLI catches once."""

from __future__ import annotations

import pytest

from forecasting.data.calendar import CalendarError
from forecasting.data.db import DatabaseError
from forecasting.data.sources.base import SourceError
from forecasting.errors import ForecastingError, InputError
from forecasting.model.registry import CheckpointError, RegistryError
from forecasting.settings import SettingsError


@pytest.mark.parametrize(
    ("error", "also", "exit_code"),
    [
        (SettingsError, ValueError, 1),
        (InputError, ValueError, 1),
        (SourceError, RuntimeError, 1),
        (CheckpointError, RuntimeError, 1),
        (RegistryError, LookupError, 1),
        (CalendarError, ValueError, 1),
        (DatabaseError, ForecastingError, 1),
    ],
)
def test_people_facing_errors_share_a_base(
    error: type[ForecastingError], also: type[Exception], exit_code: int
) -> None:
    """Each is a ForecastingError with its exit status, and still the builtin kind it was,
    so code that caught that kind catches it still."""
    assert issubclass(error, ForecastingError)
    assert issubclass(error, also)
    assert error.exit_code == exit_code
