"""What workers say about themselves: their state (the `state` field of their heartbeat hash)
and their events (entries of the capped stream `mqlab:events`, which the TUI reads).

Both are StrEnums: a member is the very string that goes to Redis, so a reader compares what
it read with a member (`fields["type"] == EventKind.JOB_FINISHED`).
"""

from __future__ import annotations

import contextlib
import time
from enum import StrEnum
from typing import Any

import redis.asyncio as aioredis

from mqlab.backend_errors import REDIS_FAILURE
from mqlab.protocol.keys import EVENTS, EVENTS_MAXLEN


class WorkerState(StrEnum):
    """A worker's state: in its heartbeat (all but DEAD) and in the lab's table."""

    STARTING = "starting"  # connecting; not taking jobs yet
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"  # a stop was asked for: finishing its job, then exiting
    #: The lab's word for a worker process that has exited: never in a heartbeat (a dead
    #: worker writes none; its key expires).
    DEAD = "dead"


class EventKind(StrEnum):
    """The `type` field of an event."""

    JOB_STARTED = "job_started"
    JOB_FINISHED = "job_finished"
    #: Our completion matched no claim: the job was taken over by another delivery.
    JOB_LOST = "job_lost"
    #: Our claim was lost (PostgreSQL restarted): the message went back to the queue.
    JOB_REQUEUED = "job_requeued"
    #: An attempt failed and the job waits in `orders:delayed` for its next one (fields:
    #: job, order, attempt, error, delay in seconds).
    JOB_FAILED = "job_failed"
    #: A job went to `orders:dead` (a permanent failure, its attempts spent; fields: job,
    #: order, attempt, reason), or a message that is not a job did (fields: reason).
    JOB_DEAD = "job_dead"
    #: The reconciler queued jobs that Redis had lost (fields: requeued, found).
    RECONCILED = "reconciled"
    WORKER_UP = "worker_up"
    WORKER_DOWN = "worker_down"


#: Events after which a worker no longer runs the job named in them.
JOB_ENDS = frozenset(
    {
        EventKind.JOB_FINISHED,
        EventKind.JOB_LOST,
        EventKind.JOB_REQUEUED,
        EventKind.JOB_FAILED,
        EventKind.JOB_DEAD,
    }
)


def queue(pipe: Any, kind: EventKind, **fields: str | int | float) -> None:
    """Add the XADD of one event to a pipeline (the worker sends it with its ack)."""
    entry: dict[str, str | int | float] = {"type": kind, "at": time.time(), **fields}
    pipe.xadd(EVENTS, entry, maxlen=EVENTS_MAXLEN, approximate=True)


async def emit(client: aioredis.Redis, kind: EventKind, **fields: str | int | float) -> None:
    """XADD one event; losing one (Redis away, or refusing) never stops the work."""
    with contextlib.suppress(*REDIS_FAILURE):
        async with client.pipeline(transaction=False) as pipe:
            queue(pipe, kind, **fields)
            await pipe.execute()
