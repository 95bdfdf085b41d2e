"""Model versions in the ``model_versions`` table: save, load, activate, list.

A version's weights (a ``torch.save`` of the CPU ``state_dict``) live either in the row
(``store="database"``) or in a file under ``model_dir`` (``store="files"``); the SHA-256 of
those bytes is always recorded and checked on load. Everything else a model needs — config,
scalers, calibration, history — is JSON in the row, so a version can be inspected with SQL.

Every function takes a SQLAlchemy ``Connection``; the caller owns the transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, RowMapping

from forecasting.data.schema import model_versions
from forecasting.errors import ForecastingError
from forecasting.model.lstm import ModelConfig
from forecasting.model.trained_model import TrainedModel


class VersionStatus(StrEnum):
    """Where a model version stands; only :func:`activate` makes one ``active``."""

    CANDIDATE = "candidate"  # saved by a refit; its run's publish decides
    ACTIVE = "active"  # the scope's champion (one at a time)
    RETIRED = "retired"  # a former champion
    REJECTED = "rejected"  # lost to the champion on the same validation windows
    DISCARDED = "discarded"  # its run failed or died before publishing


STATUSES = tuple(VersionStatus)
STORES = ("database", "files")
CHECKPOINT_FORMAT = 1


class CheckpointError(ForecastingError, RuntimeError):
    """A version's checkpoint is missing or does not match its recorded SHA-256."""


class RegistryError(ForecastingError, LookupError):
    """A version id or status that does not exist."""


@dataclass(frozen=True)
class VersionInfo:
    """One row of ``model_versions`` without its weights."""

    id: int
    created_at: dt.datetime
    scope: str
    kind: str
    parent_id: int | None
    trained_through: dt.date
    tickers: list[str]
    config: dict[str, Any]
    val_rmse: float | None
    val_naive_rmse: float | None
    train_seconds: float | None
    status: VersionStatus
    n_train_samples: int | None
    retired_reason: str | None = None  # why it was retired other than by a successor


def _checkpoint_bytes(model: TrainedModel) -> bytes:
    buf = io.BytesIO()
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict.items()}
    torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state}, buf)
    return buf.getvalue()


def _json(value: Any) -> str:
    """Strict JSON (NaN -> null) so that SQL JSON functions can read every column."""
    return json.dumps(_no_nan(value), sort_keys=True, allow_nan=False)


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def _utc(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every timestamp we write is UTC.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _write_file(model_dir: Path, name: str, data: bytes) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a checkpoint."""
    model_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=model_dir, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        path = model_dir / name
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path.resolve()


def save_version(
    conn: Connection,
    model: TrainedModel,
    *,
    kind: str,
    parent_id: int | None,
    scope: str = "global",
    status: str = "candidate",
    model_dir: str | Path | None = None,
    store: str = "database",
) -> int:
    """Record a trained model as a new version and return its id.

    ``kind`` is ``full`` or ``finetune`` (then ``parent_id`` names the version it started
    from). ``store="files"`` writes the checkpoint under ``model_dir`` and records its absolute
    path; ``"database"`` keeps the bytes in the row. To make the version live, use
    :func:`activate` (``status="active"`` here would bypass retiring the current one).
    """
    if store not in STORES:
        raise ValueError(f"store={store!r}; use one of {STORES}")
    if status not in STATUSES or status == "active":
        raise ValueError(
            f"status={status!r}; save as 'candidate' (or 'rejected') and call activate()"
        )
    data = _checkpoint_bytes(model)
    sha = hashlib.sha256(data).hexdigest()
    checkpoint: bytes | None = data
    checkpoint_path: str | None = None
    if store == "files":
        if model_dir is None:
            raise ValueError("store='files' needs model_dir (settings.model_dir)")
        safe_scope = re.sub(r"[^A-Za-z0-9_.-]", "_", scope)
        name = f"{safe_scope}-{model.trained_through.isoformat()}-{sha[:16]}.pt"
        checkpoint_path = str(_write_file(Path(model_dir), name, data))
        checkpoint = None
    row = {
        "created_at": dt.datetime.now(dt.UTC),
        "scope": scope,
        "kind": kind,
        "parent_id": parent_id,
        "trained_through": model.trained_through,
        "tickers": _json(list(model.tickers)),
        "config": _json(model.config.to_dict()),
        "scaler": _json(model.scalers),
        "calibration": _json(model.calibration),
        "history": _json(model.history),
        "val_rmse": _finite_or_none(model.val_rmse),
        "val_naive_rmse": _finite_or_none(model.val_naive_rmse),
        "train_seconds": float(model.train_seconds),
        "n_train_samples": int(model.n_train_samples),
        "checkpoint": checkpoint,
        "checkpoint_path": checkpoint_path,
        "checkpoint_sha256": sha,
        "status": status,
    }
    result = conn.execute(insert(model_versions).values(**row).returning(model_versions.c.id))
    return int(result.scalar_one())


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def _row(conn: Connection, version_id: int) -> RowMapping:
    row = (
        conn.execute(select(model_versions).where(model_versions.c.id == version_id))
        .mappings()
        .first()
    )
    if row is None:
        raise RegistryError(f"model version {version_id} does not exist")
    return row


def _info(row: RowMapping) -> VersionInfo:
    return VersionInfo(
        id=row["id"],
        created_at=_utc(row["created_at"]),
        scope=row["scope"],
        kind=row["kind"],
        parent_id=row["parent_id"],
        trained_through=row["trained_through"],
        tickers=json.loads(row["tickers"]),
        config=json.loads(row["config"]),
        val_rmse=row["val_rmse"],
        val_naive_rmse=row["val_naive_rmse"],
        train_seconds=row["train_seconds"],
        status=VersionStatus(row["status"]),
        n_train_samples=row["n_train_samples"],
        retired_reason=row.get("retired_reason"),
    )


def load_model(conn: Connection, version_id: int) -> TrainedModel:
    """Load a version, verifying its checkpoint's SHA-256; weights land on the CPU.

    Raises :class:`CheckpointError` (naming the version, the path and the fix) when the bytes
    are missing, altered or unreadable.
    """
    row = _row(conn, version_id)
    where = row["checkpoint_path"] or "the database row (model_versions.checkpoint)"
    fix = "retrain with `forecasting train --full` (and activate the new version)"
    data: bytes | None
    if row["checkpoint_path"]:
        try:
            data = Path(row["checkpoint_path"]).read_bytes()
        except OSError as exc:
            raise CheckpointError(
                f"model version {version_id}: checkpoint file {where} cannot be read ({exc}); "
                f"restore the file or {fix}"
            ) from exc
    else:
        data = row["checkpoint"]
    if not data:
        raise CheckpointError(f"model version {version_id}: no checkpoint in {where}; {fix}")
    data = bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    if sha != row["checkpoint_sha256"]:
        raise CheckpointError(
            f"model version {version_id}: checkpoint in {where} is corrupt (sha256 {sha[:12]}… "
            f"!= recorded {row['checkpoint_sha256'][:12]}…); {fix}"
        )
    try:
        payload = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        state = payload["state_dict"]
    except Exception as exc:  # any unpickling failure means the same thing to the user
        raise CheckpointError(
            f"model version {version_id}: checkpoint in {where} cannot be loaded ({exc}); {fix}"
        ) from exc
    history = json.loads(row["history"]) if row["history"] else []
    return TrainedModel(
        config=ModelConfig.from_dict(json.loads(row["config"])),
        state_dict=dict(state),
        scalers=json.loads(row["scaler"]),
        calibration=json.loads(row["calibration"]) if row["calibration"] else {},
        tickers=json.loads(row["tickers"]),
        trained_through=row["trained_through"],
        val_rmse=_nan_if_none(row["val_rmse"]),
        val_naive_rmse=_nan_if_none(row["val_naive_rmse"]),
        history=history,
        train_seconds=_nan_if_none(row["train_seconds"]),
        n_train_samples=int(row["n_train_samples"] or 0),
    )


def _nan_if_none(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def get_version(conn: Connection, version_id: int) -> VersionInfo:
    """One version's metadata; :class:`RegistryError` if the id does not exist."""
    return _info(_row(conn, version_id))


def active_version(conn: Connection, scope: str = "global") -> VersionInfo | None:
    """The active version of ``scope``, or ``None``."""
    row = (
        conn.execute(
            select(model_versions).where(
                model_versions.c.scope == scope, model_versions.c.status == "active"
            )
        )
        .mappings()
        .first()
    )
    return _info(row) if row is not None else None


def active_version_at(conn: Connection, scope: str, as_of: dt.date) -> VersionInfo | None:
    """The version that was ``scope``'s model as of ``as_of``: the newest one trained through
    ``as_of`` at the latest that a run used as its champion (``active`` or ``retired``; not one
    retired for a broken checkpoint). A run as of a past day forecasts with it, so that no
    forecast comes from a model trained past its as-of date."""
    mv = model_versions.c
    row = (
        conn.execute(
            select(model_versions)
            .where(
                mv.scope == scope,
                mv.trained_through <= as_of,
                mv.status.in_((VersionStatus.ACTIVE, VersionStatus.RETIRED)),
                mv.retired_reason.is_(None),
            )
            .order_by(mv.trained_through.desc(), mv.id.desc())
        )
        .mappings()
        .first()
    )
    return _info(row) if row is not None else None


def retire_broken(conn: Connection, version_id: int, reason: str) -> None:
    """Retire a version whose checkpoint cannot be loaded, recording why; nothing reads it as
    active (or as a point-in-time champion) again, and the next refit starts from scratch."""
    _row(conn, version_id)
    conn.execute(
        update(model_versions)
        .where(model_versions.c.id == version_id)
        .values(status=VersionStatus.RETIRED, retired_reason=reason)
    )


def latest_attempt(conn: Connection, scope: str) -> VersionInfo | None:
    """The scope's newest committed version by ``trained_through`` (then id): the last refit
    that was tried, promoted or rejected. A candidate that no run published (its run failed
    or is still going) or a discarded one does not count."""
    row = (
        conn.execute(
            select(model_versions)
            .where(
                model_versions.c.scope == scope,
                model_versions.c.status.in_(
                    (VersionStatus.ACTIVE, VersionStatus.RETIRED, VersionStatus.REJECTED)
                ),
            )
            .order_by(model_versions.c.trained_through.desc(), model_versions.c.id.desc())
        )
        .mappings()
        .first()
    )
    return _info(row) if row is not None else None


def list_versions(conn: Connection, scope: str | None = None) -> list[VersionInfo]:
    """All versions (of ``scope`` if given), oldest first."""
    q = select(model_versions).order_by(model_versions.c.id)
    if scope is not None:
        q = q.where(model_versions.c.scope == scope)
    return [_info(r) for r in conn.execute(q).mappings()]


def activate(conn: Connection, version_id: int) -> None:
    """Make ``version_id`` the active version of its scope, retiring the current one first
    (a partial unique index allows a single active version per scope)."""
    row = _row(conn, version_id)
    conn.execute(
        update(model_versions)
        .where(
            model_versions.c.scope == row["scope"],
            model_versions.c.status == "active",
            model_versions.c.id != version_id,
        )
        .values(status="retired")
    )
    conn.execute(
        update(model_versions).where(model_versions.c.id == version_id).values(status="active")
    )


def set_status(conn: Connection, version_id: int, status: str) -> None:
    """Set a version's status (``rejected``, ``retired``, ``candidate``); use :func:`activate`
    to make one active."""
    if status not in STATUSES:
        raise ValueError(f"status={status!r}; use one of {STATUSES}")
    if status == "active":
        activate(conn, version_id)
        return
    _row(conn, version_id)
    conn.execute(
        update(model_versions).where(model_versions.c.id == version_id).values(status=status)
    )


def discard_candidates(conn: Connection, scopes: Sequence[str]) -> None:
    """Mark the unpublished candidates of ``scopes`` ``discarded``: saved by a run that then
    failed or died, they never became active and never count as a refit attempt."""
    if not scopes:
        return
    conn.execute(
        update(model_versions)
        .where(model_versions.c.scope.in_(list(scopes)), model_versions.c.status == "candidate")
        .values(status=VersionStatus.DISCARDED)
    )
