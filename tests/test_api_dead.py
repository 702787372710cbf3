"""The API's dead letters: GET /jobs?status=, a job's history, POST /jobs/{id}/retry; and
the retrying, delayed and dead counts of /stats and `mqlab status`."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psycopg
import pytest
import redis

from mqlab import db
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.settings import Settings
from mqlab.system.spec import WorkerSpec
from tests.conftest import StoppableServer
from tests.dead_helpers import make_dead
from tests.helpers import eventually, insert_job, job, post_order
from tests.test_cli import run


@pytest.fixture
def raw(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.delete(keys.DELAYED)  # the clean fixture's reset does not know it yet
    client.close()


def test_jobs_filtered_by_status(
    settings: Settings, client: httpx.Client, raw: redis.Redis
) -> None:
    dead, _ = make_dead(settings.database_url, raw)
    alive = post_order(client)["jobId"]
    listed = client.get("/jobs", params={"status": "dead"})
    assert listed.status_code == 200
    assert [j["id"] for j in listed.json()] == [dead]
    assert listed.json()[0]["lastError"] == "boom: transient failure"
    assert [j["id"] for j in client.get("/jobs?status=pending").json()] == [alive]
    assert client.get("/jobs?status=completed").json() == []
    assert {j["id"] for j in client.get("/jobs").json()} == {dead, alive}
    bad = client.get("/jobs", params={"status": "buried"})
    assert bad.status_code == 422
    assert bad.json()["error"] == "invalid request"
    assert bad.json()["details"][0]["field"] == "query.status"


def test_a_job_carries_its_history(
    settings: Settings, client: httpx.Client, raw: redis.Redis
) -> None:
    dead, _ = make_dead(settings.database_url, raw, attempts=2, error="kaput")
    body = job(client, dead)
    history = body["history"]
    assert isinstance(history, list) and [a["attempt"] for a in history] == [1, 2]
    first = history[0]
    assert set(first) == {
        "attempt", "workerId", "startedAt", "finishedAt", "outcome", "error", "nextAttemptAt"
    }  # fmt: skip
    assert (first["workerId"], first["outcome"], first["error"]) == (
        "w1",
        "failed",
        "kaput (attempt 1)",
    )
    assert first["startedAt"].endswith("Z") and first["nextAttemptAt"] is None
    fresh = post_order(client)["jobId"]
    assert job(client, fresh)["history"] == []
    assert "history" not in client.get("/jobs").json()[0]  # the list leaves it out


def test_retry_answers_202_then_409_and_404(
    settings: Settings, client: httpx.Client, raw: redis.Redis, pg: psycopg.Connection
) -> None:
    dead, order_id = make_dead(settings.database_url, raw)
    res = client.post(f"/jobs/{dead}/retry")
    assert res.status_code == 202, res.text
    assert res.json() == {"message": "Trabajo reencolado", "jobId": dead, "status": "pending"}
    assert raw.llen(keys.QUEUE) == 1
    assert raw.llen(keys.DEAD) == 0
    assert job(client, dead)["status"] == "pending"
    again = client.post(f"/jobs/{dead}/retry")
    assert again.status_code == 409
    assert again.json() == {
        "error": "the job is pending, not dead",
        "details": [{"jobId": dead, "status": "pending"}],
    }
    assert raw.llen(keys.QUEUE) == 1  # replaying twice queues once
    missing = client.post("/jobs/job-nope/retry")
    assert missing.status_code == 404
    assert missing.json() == {"error": "not found", "details": [{"jobId": "job-nope"}]}
    assert client.post("/jobs/a%00b/retry").status_code == 404
    row = pg.execute("SELECT status FROM orders WHERE id = %s", [order_id]).fetchone()
    assert row == ("pending",)


def test_two_retries_at_once_queue_the_job_once(
    settings: Settings, api_url: str, raw: redis.Redis
) -> None:
    dead, _ = make_dead(settings.database_url, raw)

    def retry(_: int) -> int:
        with httpx.Client(base_url=api_url, timeout=10) as c:
            return c.post(f"/jobs/{dead}/retry").status_code

    with ThreadPoolExecutor(4) as pool:
        answers = sorted(pool.map(retry, range(4)))
    assert answers == [202, 409, 409, 409]
    assert raw.llen(keys.QUEUE) == 1
    assert raw.llen(keys.DEAD) == 0


@pytest.mark.slow
def test_a_replayed_job_is_completed_by_a_worker(
    settings: Settings, sup: Supervisor, client: httpx.Client, raw: redis.Redis
) -> None:
    dead, _ = make_dead(settings.database_url, raw, attempts=2)
    assert client.post(f"/jobs/{dead}/retry").status_code == 202
    sup.start_worker(WorkerSpec(worker_id="w9", job_seconds=0))
    done = eventually(lambda: (j := job(client, dead))["status"] == "completed" and j, timeout=30)
    assert done["attempts"] == 3 and done["workerId"] == "w9"
    history = done["history"]
    assert [(a["attempt"], a["outcome"]) for a in history] == [
        (1, "failed"),
        (2, "failed"),
        (3, "completed"),
    ]
    assert client.get("/stats").json()["jobs"]["dead"] == 0


@pytest.mark.slow
def test_retry_with_redis_down_answers_503_and_changes_nothing(
    settings: Settings, clean: None, stoppable_redis: StoppableServer, pg: psycopg.Connection
) -> None:
    """Slow by design: a Valkey and an API of their own, the Valkey stopped."""
    own = redis.Redis.from_url(stoppable_redis.url)
    dead, _ = make_dead(settings.database_url, own)
    own.close()
    with Supervisor(Settings(stoppable_redis.url, settings.database_url)) as s:
        s.start_api()
        with httpx.Client(base_url=s.api_url or "", timeout=10) as c:
            stoppable_redis.stop()
            res = c.post(f"/jobs/{dead}/retry")
            assert res.status_code == 503
            assert res.json() == {
                "error": "Redis is unavailable",
                "details": [{"backend": "Redis"}],
            }
    row = pg.execute("SELECT status FROM jobs WHERE id = %s", [dead]).fetchone()
    assert row == ("dead",)


@pytest.mark.slow
def test_stats_and_status_show_retrying_delayed_and_dead(
    settings: Settings, client: httpx.Client, raw: redis.Redis, pg: psycopg.Connection
) -> None:
    make_dead(settings.database_url, raw)
    message = insert_job(settings.database_url, "job-later")
    pg.execute("UPDATE jobs SET status = 'retrying' WHERE id = 'job-later'")
    pg.execute("UPDATE orders SET status = 'retrying' WHERE status = 'pending'")
    seconds, _ = raw.time()
    raw.zadd(keys.DELAYED, {message: seconds + 45})
    stats = client.get("/stats").json()
    assert stats["delayed"] == 1
    # ISO-8601 UTC, as every other answer gives its times (it was epoch seconds).
    assert stats["nextRetryAt"] == db.iso_epoch(seconds + 45)
    assert stats["takenAt"].endswith("Z")
    assert stats["jobs"]["retrying"] == 1 and stats["jobs"]["dead"] == 1
    assert stats["orders"]["retrying"] == 1 and stats["orders"]["failed"] == 1
    assert stats["dead"] == 1

    out = run(settings, "status", columns=80)
    assert out.returncode == 0, out.stderr
    assert max(len(line) for line in out.stdout.splitlines()) <= 80, out.stdout
    line = next(x for x in out.stdout.splitlines() if x.startswith("jobs: retrying"))
    assert line.startswith("jobs: retrying 1, delayed 1 (next due in 4"), line
    assert line.endswith("s), dead 1"), line
    assert "retrying" in out.stdout and "failed" in out.stdout  # the orders' columns

    raw.delete(keys.DELAYED)
    assert client.get("/stats").json()["nextRetryAt"] is None
    quiet = run(settings, "status", columns=80)
    assert "jobs: retrying 1, delayed 0, dead 1" in quiet.stdout
