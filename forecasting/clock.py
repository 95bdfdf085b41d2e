"""The clock: what time it is, and what date that makes it at the exchange.

Nothing in the library reads the wall clock for "today": the edge (the CLI, a flow run's
scheduled start) asks a :data:`Clock` once and passes the date down, so tests and replays set
the time by passing their own clock. The date is the exchange's: at 02:30 in Shanghai it is
already tomorrow there while it is still yesterday in UTC and in most of the world.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from zoneinfo import ZoneInfo

from forecasting.errors import InputError

#: The A-share exchanges' time zone.
EXCHANGE_TZ = "Asia/Shanghai"

#: How people write a date, on the command line and in settings.
DATE_FORMATS = ("%Y-%m-%d", "%Y%m%d")

#: Something that says what time it is, as a timezone-aware datetime.
Clock = Callable[[], dt.datetime]


def real_clock() -> dt.datetime:
    """The wall clock, timezone-aware (UTC)."""
    return dt.datetime.now(dt.UTC)


def trading_today(now: dt.datetime, tz: str = EXCHANGE_TZ) -> dt.date:
    """The calendar date at the exchange at the instant ``now`` (whether or not it trades).

    Raises:
        ValueError: when ``now`` is naive: a date without a zone is a guess (the machine's
            local date is a day off Shanghai's for eight hours of every day).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{now!r} has no time zone; a clock must return an aware datetime")
    return now.astimezone(ZoneInfo(tz)).date()


def parse_date(text: str) -> dt.date:
    """A date as people write it: ``YYYY-MM-DD`` or ``YYYYMMDD``.

    Raises:
        InputError: for anything else, saying how to write it.
    """
    for fmt in DATE_FORMATS:
        try:
            return dt.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    raise InputError(f"{text!r} is not a date; write it as YYYY-MM-DD (or YYYYMMDD)")
