"""The reconciler's last run, as the hash `mqlab:reconciler` (keys.RECONCILER) keeps it.

Written by every run (mqlab.system.reconciler), whoever ran it; read by `GET /health` and `mqlab
status`. Fields, all text as Redis keeps them: at (epoch seconds), by (a worker id, or "cli"),
took (seconds), checked (jobs PostgreSQL expected to run, older than the grace), found (of
those, the ones no Redis structure held), requeued (the ones queued again), requeuedJobs (up
to SHOWN_JOBS ids, comma-separated) and lastRequeueAt (epoch seconds of the last run that
requeued anything; absent until one did).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from mqlab import db
from mqlab.protocol import keys

#: How many requeued job ids a run keeps in its record (its count says how many there were).
SHOWN_JOBS = 10


@dataclass(frozen=True)
class LastRun:
    """One reconciler run, as recorded."""

    at: float
    by: str
    took: float
    checked: int
    found: int
    requeued: int
    requeued_jobs: list[str] = field(default_factory=list)  # at most SHOWN_JOBS
    last_requeue_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The `reconciler` object of GET /health."""
        return {
            "lastRun": db.iso_epoch(self.at),
            "by": self.by,
            "took": self.took,
            "checked": self.checked,
            "found": self.found,
            "requeued": self.requeued,
            "requeuedJobs": self.requeued_jobs,
            "lastRequeueAt": db.iso_epoch(self.last_requeue_at),
        }


async def write_run(
    client: aioredis.Redis,
    *,
    at: float,
    by: str,
    took: float,
    checked: int,
    found: int,
    requeued: Sequence[str],
) -> None:
    """Record a run. lastRequeueAt moves only when this run requeued something."""
    fields: dict[str, str | int | float] = {
        "at": at,
        "by": by,
        "took": round(took, 4),
        "checked": checked,
        "found": found,
        "requeued": len(requeued),
        "requeuedJobs": ",".join(requeued[:SHOWN_JOBS]),
    }
    if requeued:
        fields["lastRequeueAt"] = at
    await client.hset(keys.RECONCILER, mapping=fields)  # type: ignore[misc]


def _text(value: str | bytes | None) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace")
    return value or ""


def parse_run(raw: Mapping[Any, Any]) -> LastRun | None:
    """A recorded run from its hash (str or bytes keys); None when there is none, or when the
    hash is not one a run wrote (someone's hand): what reads it must still answer."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    try:
        last = fields.get("lastRequeueAt")
        jobs = fields.get("requeuedJobs", "")
        run = LastRun(
            at=float(fields["at"]),
            by=fields.get("by", "?"),
            took=float(fields.get("took", 0)),
            checked=int(fields.get("checked", 0)),
            found=int(fields.get("found", 0)),
            requeued=int(fields.get("requeued", 0)),
            requeued_jobs=jobs.split(",") if jobs else [],
            last_requeue_at=float(last) if last else None,
        )
    except (KeyError, ValueError):
        return None
    # `nan` or `inf` parse as floats, and have no ISO time.
    times = (run.at, run.took, run.last_requeue_at or 0.0)
    return run if all(math.isfinite(t) and abs(t) < 1e11 for t in times) else None


async def read_run(client: aioredis.Redis) -> LastRun | None:
    """The last run recorded, or None when the reconciler never ran (since Redis lost it)."""
    try:
        raw = await client.hgetall(keys.RECONCILER)  # type: ignore[misc]
    except redis.exceptions.ResponseError:  # WRONGTYPE: a key someone else made; not a run
        return None
    return parse_run(raw)
