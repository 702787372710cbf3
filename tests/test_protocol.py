"""The queue protocol (mqlab.protocol): ids, messages, and the scans against the real Redis."""

from __future__ import annotations

import psycopg
import pytest
import redis
import redis.asyncio as aioredis

from mqlab.protocol import keys
from mqlab.protocol.events import JOB_ENDS, EventKind, WorkerState
from mqlab.protocol.ids import (
    job_id,
    job_id_sql,
    parse_job_id,
    short_job_id,
    shorten_job_ids,
    worker_sort_key,
)
from mqlab.protocol.messages import InvalidMessage, encode_message, parse_message
from mqlab.protocol.scans import (
    heartbeat_of,
    live_worker_ids,
    live_worker_ids_sync,
    processing_lists,
    processing_lists_sync,
    worker_of,
)
from mqlab.settings import Settings
from mqlab.system.upkeep import requeue_orphans
from tests.helpers import eventually_async


def test_postgres_makes_the_job_ids_python_reads(pg: psycopg.Connection) -> None:
    row = pg.execute(f"SELECT {job_id_sql('%s::bigint', '%s::bigint')}", [12, 1795814102824])
    made = row.fetchone()
    assert made is not None and made[0] == job_id(12, 1795814102824) == "job-12-1795814102824"
    parsed = parse_job_id(made[0])
    assert parsed is not None and (parsed.order_id, parsed.epoch_ms) == (12, 1795814102824)


@pytest.mark.parametrize("text", ["job-12", "job-x-1795814102824", "job-1-17958", "", "j-1-1"])
def test_other_job_ids_are_not_ours(text: str) -> None:
    assert parse_job_id(text) is None
    assert short_job_id(text) == text


def test_job_ids_are_shortened_in_a_log_line() -> None:
    assert short_job_id("job-12-1795814102824") == "job-12"
    line = "w1: completed job-7-1795814102824 (order 7); job-8-1795814102825 next"
    assert shorten_job_ids(line) == "w1: completed job-7 (order 7); job-8 next"


def test_worker_ids_sort_naturally_the_labs_first() -> None:
    ids = ["w10", "vm-1200", "w2", "host-b-7", "w1", "vm-99", "wx", "host-a-30"]
    assert sorted(ids, key=worker_sort_key) == [
        "w1",
        "w2",
        "w10",
        "host-a-30",
        "host-b-7",
        "vm-99",
        "vm-1200",
        "wx",
    ]


def test_lab_workers_on_hosts_sort_by_host_then_number_between_the_plain_and_the_rest() -> None:
    ids = ["hostb-w1", "vm-99", "hosta-w10", "w2", "host10-w1", "hosta-w2", "host9-w3", "w1",
           "a-b-w1", "a-w2", "hosta-1234", "HostC-w1"]  # fmt: skip
    assert sorted(ids, key=worker_sort_key) == [
        "w1",
        "w2",
        "a-w2",
        "a-b-w1",  # the host is a-b: after a
        "host9-w3",  # hosts in natural order: 9 before 10
        "host10-w1",
        "hosta-w2",  # by number within a host: 2 before 10
        "hosta-w10",
        "hostb-w1",
        "HostC-w1",  # case does not matter
        "hosta-1234",  # `mqlab worker`'s default <host>-<pid>: with the other ids
        "vm-99",
    ]


def test_a_message_parses_back_to_what_was_encoded() -> None:
    raw = encode_message("job-3-1795814102824", 3, "2026-11-30T10:00:00.000Z")
    assert parse_message(raw) == ("job-3-1795814102824", 3)
    assert parse_message(raw).order_id == 3
    with pytest.raises(InvalidMessage, match="jobId"):
        parse_message(encode_message("", 3, "x"))


def test_what_redis_answers_matches_the_enums() -> None:
    """Readers get plain str from Redis and compare, look up and test membership with the
    enums: a str must equal, hash and look up like its member."""
    assert "job_finished" in JOB_ENDS and "job_started" not in JOB_ENDS
    assert {WorkerState.BUSY: "yellow"}.get("busy") == "yellow"
    assert EventKind("worker_down") is EventKind.WORKER_DOWN
    assert f"{WorkerState.IDLE}" == "idle"  # what an f-string, a log line or HSET writes


def test_worker_of_and_heartbeat_of_keep_the_keys_type() -> None:
    assert worker_of(keys.worker_key("w1")) == "w1"
    assert worker_of(keys.processing_key("w1").encode()) == b"w1"
    assert heartbeat_of(keys.processing_key("w\xff").encode("latin-1")) == (
        keys.worker_key("w").encode() + b"\xff"
    )
    with pytest.raises(ValueError, match="not a worker's key"):
        worker_of(keys.QUEUE)


async def test_the_scans_see_live_workers_and_processing_lists(
    settings: Settings, rds: redis.Redis, clean: None
) -> None:
    for wid in ("w10", "vm-7", "w2"):
        rds.set(keys.worker_key(wid), "1", ex=keys.HEARTBEAT_TTL)
    raw = redis.Redis.from_url(settings.redis_url)  # bytes: a list whatever its name
    raw.lpush(keys.processing_key("w2").encode(), b"m1")
    raw.lpush(keys.PROCESSING_PREFIX.encode() + b"gone\xff", b"m2", b"m3")
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        assert live_worker_ids_sync(rds) == ["w2", "w10", "vm-7"]
        assert await live_worker_ids(client) == ["w2", "w10", "vm-7"]
        expected = {keys.processing_key("w2").encode(), b"orders:processing:gone\xff"}
        assert set(processing_lists_sync(raw)) == expected
        assert set(await processing_lists(client)) == expected
        # The reaper: the lists of workers without a heartbeat go back to the queue, from
        # the bytes of their names; a live worker's list stays where it is. It moves nothing
        # while the server is younger than a heartbeat TTL (this test may run first).
        moved = await eventually_async(
            lambda: requeue_orphans(client),
            timeout=keys.HEARTBEAT_TTL + 5,
            what="the reaper's pass once the server is a heartbeat TTL old",
        )
        assert moved == 2
        assert sorted(raw.lrange(keys.QUEUE, 0, -1)) == [b"m2", b"m3"]
        assert raw.llen(keys.processing_key("w2")) == 1
    finally:
        await client.aclose()
        raw.close()
