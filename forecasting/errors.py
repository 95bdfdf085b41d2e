"""Errors for people: the one base class the command line catches.

Every error a user can cause and fix (a bad setting, a missing token, a date range the wrong
way round, a checkpoint that went missing) derives from :class:`ForecastingError`. Its message
is one line that names the ticker, the date, the setting or the option, and says what to do;
the CLI prints it as ``error: <message>`` without a traceback. Anything else is a bug and keeps
its traceback.

This module imports nothing, so that the CLI can catch these errors without loading the
library (``forecasting --help`` must not import torch or pandas).
"""

from __future__ import annotations


class ForecastingError(Exception):
    """A mistake a person can fix; the message says which and how, in one line."""

    #: The command line's exit status for this error.
    exit_code: int = 1


class InputError(ForecastingError, ValueError):
    """A value the caller passed (a date range, a ticker list, a count) cannot be used."""


class DatabaseError(ForecastingError):
    """The database cannot be opened or reached; the message names it (password hidden)."""


#: What to do about a database that is not there yet, or has no tables.
MISSING_DATABASE_FIX = (
    "run `forecasting init-db` or `forecasting ingest` first, or set FORECASTING_DATABASE_URL"
)
