"""The two scans of the queue protocol: live workers (their heartbeat keys) and processing
lists (what each worker holds), for redis-py's sync and asyncio clients; and whether one run
of a worker is alive.

A key comes back as the client gives it: str from a decoding client, bytes from one that
does not (the worker's: a processing list is handled whatever its name, so its owner's
heartbeat key is made from the same bytes, never from a decoded copy).
"""

from __future__ import annotations

from typing import TypeVar

import redis
import redis.asyncio as aioredis

from mqlab.protocol.ids import worker_sort_key
from mqlab.protocol.keys import INSTANCE_FIELD, PROCESSING_PREFIX, WORKER_PREFIX

Key = TypeVar("Key", str, bytes)

#: Keys a SCAN round trip asks for: a lab has tens of workers, not thousands.
SCAN_COUNT = 500


def _match(prefix: str) -> str:
    return f"{prefix}*"


def worker_of(key: Key) -> Key:
    """The worker id a heartbeat key or a processing list names (same type as the key)."""
    for prefix in (PROCESSING_PREFIX, WORKER_PREFIX):
        head: str | bytes = prefix.encode() if isinstance(key, bytes) else prefix
        if key.startswith(head):  # type: ignore[arg-type]
            return key[len(head) :]
    raise ValueError(f"not a worker's key: {key!r}")


def heartbeat_of(processing: Key) -> Key:
    """The heartbeat key of the worker that owns a processing list (same type as the key)."""
    owner = worker_of(processing)
    if isinstance(owner, bytes):
        return WORKER_PREFIX.encode() + owner
    return WORKER_PREFIX + owner


def _ids(found: list[str] | list[bytes]) -> list[str]:
    ids = [
        worker_of(k).decode(errors="backslashreplace") if isinstance(k, bytes) else worker_of(k)
        for k in found
    ]
    return sorted(ids, key=worker_sort_key)


async def live_worker_ids(client: aioredis.Redis) -> list[str]:
    """Ids of the workers whose heartbeat key has not expired, in worker_sort_key order."""
    return _ids([k async for k in client.scan_iter(match=_match(WORKER_PREFIX), count=SCAN_COUNT)])


def live_worker_ids_sync(client: redis.Redis) -> list[str]:
    """live_worker_ids() for a sync client."""
    return _ids(list(client.scan_iter(match=_match(WORKER_PREFIX), count=SCAN_COUNT)))


async def processing_lists(client: aioredis.Redis) -> list[str] | list[bytes]:
    """The names of every worker's processing list (only non-empty lists exist in Redis)."""
    return [k async for k in client.scan_iter(match=_match(PROCESSING_PREFIX), count=SCAN_COUNT)]


def processing_lists_sync(client: redis.Redis) -> list[str] | list[bytes]:
    """processing_lists() for a sync client."""
    return list(client.scan_iter(match=_match(PROCESSING_PREFIX), count=SCAN_COUNT))


async def runs(client: aioredis.Redis, worker: str | None, instance: str | None) -> bool:
    """Is that run of that worker alive: its heartbeat key exists and names `instance`?
    (A claim made by an older mqlab names no run: its worker counts as gone.)"""
    if worker is None or instance is None:
        return False
    found = await client.hget(WORKER_PREFIX + worker, INSTANCE_FIELD)
    if isinstance(found, bytes):
        found = found.decode(errors="replace")
    return found == instance
