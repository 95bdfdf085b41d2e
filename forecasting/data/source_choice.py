"""Which price source a command or flow ingests from, when there is no default: a light
module (it imports nothing heavy), so that the CLI can refuse at once."""

from __future__ import annotations

from forecasting.errors import InputError

#: What to say when a run has no source for a ticker.
HOW_TO_SET = (
    "set FORECASTING_SOURCE (tushare or csv, with FORECASTING_SOURCE_PATH) or `source` in "
    "forecasting.toml, or ingest it once with `forecasting ingest --source ...`"
)


def chosen_source(name: str | None) -> str:
    """The source a command or flow was given, or :class:`InputError` saying how to set one."""
    if not name:
        raise InputError(f"no price source is configured; {HOW_TO_SET} (or pass --source)")
    return name
