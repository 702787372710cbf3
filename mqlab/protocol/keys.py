"""Redis key names and the heartbeat timings: the queue protocol's contract, in one place.

`redis-cli`, the API, the workers, the lab and the tests all name these keys; nothing else in
mqlab spells them out (tests/test_layout.py checks it for the queue's name).
"""

from __future__ import annotations

#: The FIFO queue: the API LPUSHes, workers BLMOVE from the right.
QUEUE = "orders:queue"
#: Per-worker in-flight list (the reliable-queue pattern): `orders:processing:<worker>`.
PROCESSING_PREFIX = "orders:processing:"
#: Jobs waiting out their backoff: a sorted set of their messages, scored by the epoch
#: second (Redis's clock) they are due; due ones move to QUEUE (mqlab.protocol.delayed).
DELAYED = "orders:delayed"
#: Dead letters, newest first: dead jobs (permanent failure, attempts spent) and queue entries
#: that are not jobs, each wrapped with the reason (mqlab.protocol.messages.dead_letter).
DEAD = "orders:dead"
#: The reconciler's lock (SET NX with a TTL: one reconciler at a time, whichever worker) ...
RECONCILER_LOCK = "mqlab:reconciler:lock"
#: ... and its last run, a hash: when, by whom, what it found and requeued.
RECONCILER = "mqlab:reconciler"
#: Where the lab parks a full queue while a drain's workers start (a drain row of a suite,
#: `mqlab bench`'s drain phases), so that their start-up is not part of the drain: renamed
#: back to QUEUE once they wait in BLMOVE.
PARKED = "mqlab:parked"
#: Per-worker liveness hash with a TTL: `mqlab:worker:<worker>`.
WORKER_PREFIX = "mqlab:worker:"
#: Live events for the UI (job started/finished/failed, worker up/down).
EVENTS = "mqlab:events"
EVENTS_MAXLEN = 10_000

#: A worker refreshes its heartbeat this often (seconds) ...
HEARTBEAT_INTERVAL = 1.0
#: ... and its key expires this long after the last beat. A job held by a worker whose key
#: expired is moved back to the queue, so a crash is recovered within TTL + one reaper pass.
HEARTBEAT_TTL = 3
#: The heartbeat's field naming this run of the worker (new at each start). A claim names it
#: too (jobs.worker_instance): a worker is alive for a claim only while its heartbeat names
#: the run that made it, so that one started again with the same id takes back its old job.
INSTANCE_FIELD = "instance"


def processing_key(worker_id: str) -> str:
    """The in-flight list of one worker."""
    return f"{PROCESSING_PREFIX}{worker_id}"


def worker_key(worker_id: str) -> str:
    """The heartbeat hash of one worker."""
    return f"{WORKER_PREFIX}{worker_id}"
