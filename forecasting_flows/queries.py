"""The SQL queries users run, wherever the package is: ``forecasting sql list`` and ``show``.

In the repository they are the files of ``sql/queries/``; an installed package carries the same
files as the package data ``forecasting.queries`` (``pyproject.toml`` maps that package to
``sql/queries``), so a user who installed a wheel reads them with ``forecasting sql show NAME``
and has no ``sql/`` folder to find.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from forecasting.errors import InputError

#: The repository's folder, for a checkout used in place (``PYTHONPATH=.``, or an editable
#: install made before ``forecasting.queries`` was package data).
REPOSITORY_FOLDER = Path(__file__).resolve().parents[1] / "sql" / "queries"


@dataclass(frozen=True)
class Query:
    name: str  # the file name without ``.sql``
    summary: str  # its first comment line
    text: str


def folder() -> Traversable:
    """Where the queries are: the installed package data, else the repository's folder."""
    try:
        installed = resources.files("forecasting.queries")
    except ModuleNotFoundError:
        return REPOSITORY_FOLDER
    return installed if any(installed.iterdir()) else REPOSITORY_FOLDER


def _summary(text: str) -> str:
    first = next((line for line in text.splitlines() if line.startswith("--")), "")
    return first.removeprefix("--").strip()


def all_queries() -> list[Query]:
    """Every query, by name."""
    files = sorted((f for f in folder().iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    out = []
    for f in files:
        text = f.read_text(encoding="utf-8")
        out.append(Query(f.name.removesuffix(".sql"), _summary(text), text))
    return out


def query(name: str) -> Query:
    """One query by its name (``retrain_history`` or ``retrain_history.sql``).

    Raises:
        InputError: for an unknown name, listing the close ones.
    """
    wanted = name.strip().removesuffix(".sql")
    known = {q.name: q for q in all_queries()}
    if wanted in known:
        return known[wanted]
    near = difflib.get_close_matches(wanted, list(known), n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(near)}? " if near else ""
    raise InputError(f"no query named {name!r}; {hint}`forecasting sql list` lists them")
