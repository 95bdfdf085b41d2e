"""Model versions changed by hand: promote one, or roll the champion back to the one before.

The daily run promotes a challenger only when it wins on validation; a person who knows better
(a rejected fine-tune they want anyway, a champion that misbehaves in production) changes the
champion here. Each change is recorded in ``model_checks`` like a run's decision, so the
retrain history says who changed what and why: ``decision`` is ``promote`` or ``rollback``,
``triggered_by`` is ``manual``, ``reason`` the person's words, ``model_version_id`` the champion
before and ``new_version_id`` the one after. The change and its record commit together, under
the lineage's lock, so no run of that lineage publishes in between.

A rollback makes the newest former champion (``retired``) active again and marks the version
it replaces ``rejected``, so rolling back twice walks back two champions rather than flipping
between two.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection, Engine

from forecasting.data.locks import scope_lock
from forecasting.data.schema import model_checks, model_versions
from forecasting.errors import InputError
from forecasting.model import registry
from forecasting.model.registry import VersionStatus
from forecasting.pipeline import runs
from forecasting.pipeline.daily import lineage_lock

#: Statuses a version can be promoted from: a former champion or a losing challenger.
PROMOTABLE = (VersionStatus.RETIRED, VersionStatus.REJECTED)


@dataclass(frozen=True)
class Change:
    """What a promotion or rollback did, for the command line to print."""

    scope: str
    decision: str  # promote | rollback | none
    before: int | None
    after: int
    message: str


def _lineage(scope: str) -> str:
    """The lineage a scope belongs to (``global`` -> ``live``, ``backfill:...:.../global`` ->
    ``backfill:...:...``)."""
    return scope.rsplit("/", 1)[0] if "/" in scope else "live"


def _record(
    conn: Connection, decision: str, scope: str, before: int | None, after: int, reason: str
) -> None:
    conn.execute(
        insert(model_checks).values(
            run_id=None,
            as_of_date=dt.datetime.now(dt.UTC).date(),
            scope=scope,
            model_version_id=before,
            check_window=0,
            triggered_by="manual",
            decision=decision,
            reason=reason,
            new_version_id=after,
            promoted=True,
            created_at=runs.utcnow(),
        )
    )


def _checkpoint_loads(engine: Engine, version_id: int) -> None:
    """A champion that cannot be loaded would fail the next run: refuse it now."""
    with engine.connect() as conn:
        registry.load_model(conn, version_id)


def promote(engine: Engine, version_id: int, *, reason: str) -> Change:
    """Make ``version_id`` the active version of its scope (the champion retires).

    Raises:
        RegistryError: when there is no such version.
        InputError: when it cannot be promoted (a run's candidate in flight, a discarded one)
            or no reason is given.
        CheckpointError: when its weights cannot be loaded.
    """
    if not reason.strip():
        raise InputError("--reason is empty; say why, it is recorded in model_checks")
    with engine.connect() as conn:
        info = registry.get_version(conn, version_id)
    if info.status == VersionStatus.ACTIVE:
        return Change(
            info.scope, "none", version_id, version_id, f"version {version_id} is already active"
        )
    if info.status not in PROMOTABLE:
        raise InputError(
            f"version {version_id} is {info.status.value}; only a retired or rejected version "
            "can be promoted (`forecasting models` lists them)"
        )
    _checkpoint_loads(engine, version_id)
    with scope_lock(engine, lineage_lock(_lineage(info.scope))), engine.begin() as conn:
        current = registry.active_version(conn, info.scope)
        before = current.id if current else None
        registry.activate(conn, version_id)
        _record(conn, "promote", info.scope, before, version_id, f"manual promote: {reason}")
    return Change(
        info.scope,
        "promote",
        before,
        version_id,
        f"scope {info.scope}: version {version_id} is active"
        + (f", version {before} retired" if before else ""),
    )


def rollback(engine: Engine, *, scope: str = "global", reason: str) -> Change:
    """Make the scope's newest former champion active again; the current one is ``rejected``.

    Raises:
        InputError: when the scope has no active version or no former champion, or no reason
            is given.
        CheckpointError: when the former champion's weights cannot be loaded.
    """
    if not reason.strip():
        raise InputError("--reason is empty; say why, it is recorded in model_checks")
    with engine.connect() as conn:
        current = registry.active_version(conn, scope)
        previous = conn.execute(
            select(model_versions.c.id)
            .where(
                model_versions.c.scope == scope,
                model_versions.c.status == VersionStatus.RETIRED.value,
            )
            .order_by(model_versions.c.id.desc())
            .limit(1)
        ).scalar()
    if current is None:
        raise InputError(
            f"scope {scope} has no active version to roll back; `forecasting models` lists them"
        )
    if previous is None:
        raise InputError(
            f"scope {scope} has no former champion to roll back to; promote a version by id "
            "with `forecasting models promote VERSION`"
        )
    _checkpoint_loads(engine, previous)
    with scope_lock(engine, lineage_lock(_lineage(scope))), engine.begin() as conn:
        registry.activate(conn, previous)
        registry.set_status(conn, current.id, VersionStatus.REJECTED.value)
        _record(conn, "rollback", scope, current.id, previous, f"manual rollback: {reason}")
    return Change(
        scope,
        "rollback",
        current.id,
        previous,
        f"scope {scope}: version {previous} is active again, version {current.id} rejected",
    )
