"""Redis or PostgreSQL away: the API answers 503 naming it and writes nothing; workers wait."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg
import pytest
import redis

from mqlab import keys
from mqlab.db import apply_schema
from mqlab.procs import free_port, terminate
from mqlab.services import postgres_server, valkey_server
from mqlab.settings import Settings
from mqlab.supervisor import Supervisor
from tests.conftest import counts
from tests.helpers import eventually

ORDER = {"product": "Laptop", "quantity": 1, "price": 1200}
REDIS = {"backend": "Redis"}
PG = {"backend": "PostgreSQL"}


class Flaky:
    """A throwaway server of ours that a test can stop and start again on the same port."""

    def __init__(self, module: Any, base: Path) -> None:
        self.module, self.base, self.port = module, base, free_port()
        self.record: dict[str, Any] = {}

    def start(self) -> None:
        self.record = self.module.start(self.base, self.port, owned=True)

    def stop(self) -> None:
        terminate(self.record["pid"])

    @property
    def url(self) -> str:
        return str(self.record["url"])


@pytest.fixture
def flaky_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flaky]:
    server = Flaky(valkey_server, tmp_path_factory.mktemp("r"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def flaky_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flaky]:
    server = Flaky(postgres_server, tmp_path_factory.mktemp("p"))
    server.start()
    apply_schema(server.url)
    yield server
    server.stop()


def test_api_with_redis_down_answers_503_and_writes_nothing(
    settings: Settings,
    clean: None,
    flaky_redis: Flaky,
    pg: psycopg.Connection,
    rds: redis.Redis,
) -> None:
    with Supervisor(Settings(flaky_redis.url, settings.database_url)) as sup:
        api = sup.start_api()
        with httpx.Client(base_url=sup.api_url or "", timeout=10) as c:
            assert c.post("/orders", json=ORDER).status_code == 202
            flaky_redis.stop()
            health = c.get("/health")
            assert health.status_code == 503
            assert health.json() == {"error": "Redis unavailable", "details": [REDIS]}
            res = c.post("/orders", json=ORDER)
            assert res.status_code == 503
            # The backend's name only: its address and the driver's words go to the log.
            assert res.json() == {"error": "Redis is unavailable", "details": [REDIS]}
            assert res.headers["retry-after"] == "1"
            eventually(lambda: "Redis is unavailable: " in api.tail(), timeout=5)
            socket = urlsplit(flaky_redis.url).path  # the embedded Valkey's unix socket
            assert socket in api.tail()
            assert socket not in res.text + health.text
            # The accepted order stays; the refused one left no row behind.
            assert counts(pg, rds)["orders"] == 1
            flaky_redis.start()
            eventually(lambda: c.get("/health").status_code == 200, timeout=10)
            assert c.post("/orders", json=ORDER).status_code == 202
            assert counts(pg, rds)["orders"] == 2
            # The first order's message survived the restart (append-only file).
            client = redis.Redis.from_url(flaky_redis.url)
            assert client.llen(keys.QUEUE) == 2
            client.close()


def test_api_with_postgres_down_answers_503_and_enqueues_nothing(
    settings: Settings, clean: None, flaky_pg: Flaky, rds: redis.Redis
) -> None:
    with Supervisor(Settings(settings.redis_url, flaky_pg.url)) as sup:
        api = sup.start_api()
        with httpx.Client(base_url=sup.api_url or "", timeout=10) as c:
            flaky_pg.stop()
            health = c.get("/health")
            assert health.status_code == 503
            assert health.json() == {"error": "PostgreSQL unavailable", "details": [PG]}
            res = c.post("/orders", json=ORDER)
            assert res.status_code == 503
            assert res.json() == {"error": "PostgreSQL is unavailable", "details": [PG]}
            for path in ("/orders", "/jobs/x", "/stats"):
                assert c.get(path).json() == res.json(), path
            eventually(lambda: "PostgreSQL is unavailable: " in api.tail(), timeout=5)
            assert rds.llen(keys.QUEUE) == 0
            flaky_pg.start()
            eventually(lambda: c.post("/orders", json=ORDER).status_code == 202, timeout=15)
            assert rds.llen(keys.QUEUE) == 1


def test_api_starts_and_says_which_backend_is_missing(settings: Settings) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    with Supervisor(Settings(dead_redis, settings.database_url)) as sup:
        sup.start_api(require_healthy=False)
        res = httpx.get(f"{sup.api_url}/health", timeout=5)
        assert res.status_code == 503
        assert [d["backend"] for d in res.json()["details"]] == ["Redis"]


def _insert_job(url: str, job_id: str) -> bytes:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO orders (product, quantity, price) VALUES ('x', 1, 1) RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute("INSERT INTO jobs (id, order_id) VALUES (%s, %s)", [job_id, row[0]])
    return orjson.dumps({"jobId": job_id, "orderId": row[0], "enqueuedAt": "x"})


def _status(url: str, job_id: str) -> str | None:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", [job_id]).fetchone()
    return row[0] if row else None


def test_worker_waits_for_redis_and_reconnects(
    settings: Settings, clean: None, flaky_redis: Flaky
) -> None:
    with Supervisor(Settings(flaky_redis.url, settings.database_url)) as sup:
        child = sup.start_worker("w1", job_seconds=0)
        flaky_redis.stop()
        time.sleep(2.5)
        assert child.alive(), child.tail()
        assert "retrying" in child.tail()
        flaky_redis.start()
        message = _insert_job(settings.database_url, "job-r-1")
        client = redis.Redis.from_url(flaky_redis.url)
        client.lpush(keys.QUEUE, message)
        client.close()
        eventually(lambda: _status(settings.database_url, "job-r-1") == "completed", timeout=15)
        assert child.alive()


def test_worker_waits_for_postgres_and_reconnects(
    settings: Settings, clean: None, flaky_pg: Flaky, rds: redis.Redis
) -> None:
    with Supervisor(Settings(settings.redis_url, flaky_pg.url)) as sup:
        child = sup.start_worker("w1", job_seconds=0)
        message = _insert_job(flaky_pg.url, "job-p-1")
        flaky_pg.stop()
        rds.lpush(keys.QUEUE, message)
        eventually(lambda: "retrying" in child.tail(), timeout=10)
        assert child.alive(), child.tail()
        flaky_pg.start()
        eventually(lambda: _status(flaky_pg.url, "job-p-1") == "completed", timeout=20)
        assert child.alive()
        assert rds.llen(keys.DEAD) == 0
