"""The worker: processing, graceful stops, crash recovery, dead letters, duplicates."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import os
import signal
import time
from collections.abc import Iterator

import httpx
import orjson
import psycopg
import pytest
import redis

from mqlab import db
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys, messages
from mqlab.settings import Settings
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, insert_job, job, post_order


@pytest.fixture
def raw_rds(settings: Settings) -> Iterator[redis.Redis]:
    """A client that answers bytes: queue entries need not be UTF-8."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


@pytest.mark.slow
def test_one_order_one_worker_completes_in_about_the_job_time(
    sup: Supervisor, client: httpx.Client
) -> None:
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.5))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=10)
    j = job(client, created["jobId"])
    assert j["workerId"] == "w1"
    assert j["attempts"] == 1
    # The job's own time, from PostgreSQL's clock: its 0.5 s of work, plus at most a little
    # overhead (generous: the machine may be busy). A worker that skipped or repeated the
    # work, or recorded the wrong timestamps, falls outside.
    took = (at(j["finishedAt"]) - at(j["startedAt"])).total_seconds()
    assert 0.5 <= took < 2.0, took
    order = client.get(f"/orders/{created['orderId']}").json()
    assert order["status"] == "completed"
    assert order["completedAt"] == j["finishedAt"]


def at(stamp: object) -> dt.datetime:
    """An API timestamp (ISO-8601, UTC) as a datetime."""
    return dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


@pytest.mark.slow
def test_jobs_are_spread_over_workers(sup: Supervisor, client: httpx.Client) -> None:
    sup.start_workers(2, WorkerSpec(job_seconds=0.3))
    for i in range(6):
        post_order(client, f"Item{i}")
    eventually(lambda: client.get("/stats").json()["jobs"]["completed"] == 6, timeout=15)
    by_worker: dict[str, int] = {}
    for j in client.get("/jobs").json():
        by_worker[j["workerId"]] = by_worker.get(j["workerId"], 0) + 1
    assert set(by_worker) == {"w1", "w2"}
    assert min(by_worker.values()) >= 2


@pytest.mark.slow
def test_500_orders_from_10_clients_at_4_idle_workers_all_complete(
    sup: Supervisor, api_url: str, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """Commit before enqueue: no job may be popped before its row exists.

    Slow by design: 500 real orders through the API, PostgreSQL and the workers.
    """
    sup.start_workers(4, WorkerSpec(job_seconds=0))

    def fire(n: int) -> list[int]:
        with httpx.Client(base_url=api_url, timeout=10) as c:
            return [
                c.post(
                    "/orders", json={"product": f"p{n}-{i}", "quantity": 1, "price": 1}
                ).status_code
                for i in range(50)
            ]

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = [code for batch in pool.map(fire, range(10)) for code in batch]
    assert codes == [202] * 500

    def all_done() -> bool:
        row = pg.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
        return row is not None and row[0] == 500

    eventually(all_done, timeout=60, interval=0.2)
    statuses = dict(pg.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall())
    assert statuses == {"completed": 500}
    assert rds.llen(keys.DEAD) == 0
    assert rds.llen(keys.QUEUE) == 0
    attempts = pg.execute("SELECT max(attempts), min(attempts) FROM jobs").fetchone()
    assert attempts == (1, 1)


@pytest.mark.slow
def test_kill_9_mid_job_is_recovered_by_another_worker_exactly_once(
    sup: Supervisor, client: httpx.Client, rds: redis.Redis
) -> None:
    """Slow by design: the killed worker's job comes back only once its heartbeat has expired
    (keys.HEARTBEAT_TTL), and w1's 3 s job must still be running when it is killed."""
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=3))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    # A second worker, idle, so the recovered job has somewhere to go.
    sup.start_worker(WorkerSpec(worker_id="w2", job_seconds=0.5))
    assert job(client, created["jobId"])["workerId"] == "w1"
    killed_at = time.monotonic()
    sup.kill("w1")

    def taken_over() -> bool:
        j = job(client, created["jobId"])
        return j["workerId"] == "w2" and j["attempts"] == 2

    eventually(taken_over, timeout=8, interval=0.05)
    recovered_in = time.monotonic() - killed_at
    assert recovered_in < 5, f"back in the queue {recovered_in:.1f}s after the kill"
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=5)
    final = job(client, created["jobId"])
    assert final["attempts"] == 2
    assert final["workerId"] == "w2"
    finished = [
        fields
        for _, fields in rds.xrange(keys.EVENTS)
        if fields["type"] == "job_finished" and fields["job"] == created["jobId"]
    ]
    assert len(finished) == 1
    assert rds.llen(keys.processing_key("w1")) == 0


@pytest.mark.slow
def test_sigterm_finishes_the_current_job_then_exits_0(
    sup: Supervisor, client: httpx.Client
) -> None:
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=1))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    assert sup.stop("w1") == 0
    j = job(client, created["jobId"])
    assert j["status"] == "completed"
    assert j["attempts"] == 1


@pytest.mark.slow
def test_second_sigterm_hands_the_job_back(
    sup: Supervisor, client: httpx.Client, rds: redis.Redis
) -> None:
    child = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=30))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    os.kill(child.pid, signal.SIGTERM)
    # The second signal must come after the first was taken in (it says so), not race it.
    eventually(lambda: "stopping after the current job" in child.tail())
    os.kill(child.pid, signal.SIGTERM)
    assert child.proc.wait(10) == 0
    assert rds.llen(keys.QUEUE) == 1
    assert rds.llen(keys.processing_key("w1")) == 0
    # Back on the queue, and so pending again, naming no worker (it was w1's, processing).
    handed = job(client, created["jobId"])
    assert (handed["status"], handed["workerId"], handed["attempts"]) == ("pending", None, 1)
    assert client.get(f"/orders/{created['orderId']}").json()["status"] == "pending"
    sup.start_worker(WorkerSpec(worker_id="w2", job_seconds=0))
    eventually(lambda: job(client, created["jobId"])["status"] == "completed")
    assert job(client, created["jobId"])["attempts"] == 2


@pytest.mark.slow
def test_invalid_messages_go_to_the_dead_letter_list_and_the_worker_goes_on(
    sup: Supervisor, client: httpx.Client, rds: redis.Redis
) -> None:
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0))
    bad = [
        "not json",
        "[1, 2]",
        '{"orderId": 1}',
        '{"jobId": "job-x", "orderId": "1"}',
        '{"jobId": "job-404-1", "orderId": 404}',
    ]
    for message in bad:
        rds.lpush(keys.QUEUE, message)
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "completed")
    eventually(lambda: rds.llen(keys.DEAD) == len(bad))
    dead = [orjson.loads(x) for x in rds.lrange(keys.DEAD, 0, -1)]
    assert {d["message"] for d in dead} == set(bad)
    reasons = " | ".join(d["reason"] for d in dead)
    for word in ("not JSON", "not a JSON object", "jobId", "orderId", "no job job-404-1"):
        assert word in reasons
    assert rds.llen(keys.processing_key("w1")) == 0


@pytest.mark.slow
def test_a_duplicate_delivery_is_not_completed_twice(
    sup: Supervisor, client: httpx.Client, rds: redis.Redis
) -> None:
    created = post_order(client)
    message = rds.lindex(keys.QUEUE, 0)
    assert message is not None
    rds.lpush(keys.QUEUE, message)  # the same job, delivered twice
    child = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.2))
    eventually(lambda: job(client, created["jobId"])["status"] == "completed")
    # The second delivery has been seen for what it is, and acked.
    eventually(lambda: "is already completed" in child.tail())
    eventually(lambda: rds.llen(keys.QUEUE) == 0 and rds.llen(keys.processing_key("w1")) == 0)
    j = job(client, created["jobId"])
    assert j["attempts"] == 1
    finished = [f for _, f in rds.xrange(keys.EVENTS) if f["type"] == "job_finished"]
    assert len(finished) == 1
    assert rds.llen(keys.DEAD) == 0


@pytest.mark.slow
def test_heartbeat_shows_state_and_expires_after_a_kill(
    sup: Supervisor, client: httpx.Client, rds: redis.Redis
) -> None:
    """Slow by design: it waits for the heartbeat's TTL (keys.HEARTBEAT_TTL) to run out."""
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=2))
    beat = rds.hgetall(keys.worker_key("w1"))
    assert beat["state"] == "idle"
    assert int(beat["pid"]) == sup.children["w1"].pid
    assert 0 < rds.ttl(keys.worker_key("w1")) <= keys.HEARTBEAT_TTL
    created = post_order(client)
    eventually(lambda: rds.hget(keys.worker_key("w1"), "job") == created["jobId"])
    assert rds.hget(keys.worker_key("w1"), "state") == "busy"
    sup.kill("w1")
    eventually(lambda: not rds.exists(keys.worker_key("w1")), timeout=keys.HEARTBEAT_TTL + 2)


@pytest.mark.slow
def test_a_lost_claim_is_handed_back_and_completed_once(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """The claim commits asynchronously: if PostgreSQL loses it in a crash, the completion
    finds the job pending again, and the worker hands the message back instead of dropping it."""
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=1))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    # What a crash that lost the asynchronous claim leaves behind.
    pg.execute(
        "UPDATE jobs SET status = 'pending', attempts = 0, worker_id = NULL, started_at = NULL "
        "WHERE id = %s",
        [created["jobId"]],
    )
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=10)
    final = job(client, created["jobId"])
    assert final["attempts"] == 1
    kinds = [f["type"] for _, f in rds.xrange(keys.EVENTS) if f.get("job") == created["jobId"]]
    assert "job_requeued" in kinds
    assert kinds.count("job_finished") == 1
    assert rds.llen(keys.DEAD) == 0


@pytest.mark.slow
def test_no_queue_entry_whatever_its_bytes_stops_a_worker(
    sup: Supervisor,
    client: httpx.Client,
    pg: psycopg.Connection,
    rds: redis.Redis,
    raw_rds: redis.Redis,
) -> None:
    """Each of these once made every worker exit (and put the entry back at the queue's head,
    for the next worker to die on): now they are dead-lettered, and the queue drains."""
    # A real job whose claim PostgreSQL refuses: attempts + 1 overflows an integer.
    maxed = post_order(client, "maxed")
    pg.execute("UPDATE jobs SET attempts = 2147483647 WHERE id = %s", [maxed["jobId"]])
    maxed_message = raw_rds.lindex(keys.QUEUE, 0)
    assert maxed_message is not None
    workers = sup.start_workers(2, WorkerSpec(job_seconds=0))
    bad: dict[bytes, str] = {  # entry -> what its dead letter's reason says
        b'{"jobId":"a\\u0000b","orderId":1}': "unprintable",  # redis-cli's '\u0000'
        b'\xff\xfe{"x":1}': "not UTF-8 (byte 0xff at 0)",
        b'{"jobId":"a\x00b","orderId":1}': "not JSON",  # a raw NUL byte in a string
        b'{"jobId":"line\\nbreak","orderId":1}': "unprintable",
        b"": "not JSON",
        b"[" * 5000: "not JSON",  # deeper than the parser goes
        b'{"jobId":"job-9","orderId":1e999}': "not JSON",
        orjson.dumps({"jobId": "j" * 1_000_000, "orderId": 1}): "too large",
        b"\xff" * 200_000: "too large",
        orjson.dumps({"jobId": "j" * 201, "orderId": 1}): "longer than 200",
        b'{"jobId":"job-404","orderId":18446744073709551615}': "no job job-404",
        maxed_message: "integer out of range (22003)",
    }
    raw_rds.lpush(keys.QUEUE, *[entry for entry in bad if entry != maxed_message])
    good = [post_order(client, f"Item{i}") for i in range(20)]

    def completed() -> bool:
        row = pg.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
        return row == (len(good),)

    eventually(completed, timeout=30)
    eventually(lambda: rds.llen(keys.DEAD) == len(bad))
    assert all(w.alive() for w in workers), [w.tail() for w in workers]
    assert rds.llen(keys.QUEUE) == 0
    assert all(rds.llen(keys.processing_key(w.name)) == 0 for w in workers)
    entries = raw_rds.lrange(keys.DEAD, 0, -1)
    assert max(len(e) for e in entries) < 16_000  # 1 MB entries made 2 MB dead letters
    dead = {(d["message"], d["messageBytes"]): d for d in (orjson.loads(e) for e in entries)}
    for entry, says in bad.items():
        text = entry[: messages.DEAD_MESSAGE_BYTES].decode("utf-8", "backslashreplace")
        letter = dead[(text, len(entry))]
        assert says in letter["reason"], letter["reason"]
        assert len(letter["reason"]) <= messages.REASON_CHARS
        assert letter["workerId"] in {w.name for w in workers}
    # What the log and the lab's event stream say about them is cut to a size too.
    dead_events = [f for _, f in rds.xrange(keys.EVENTS) if f["type"] == "job_dead"]
    assert len(dead_events) == len(bad)
    assert max(len(v) for f in dead_events for v in f.values()) <= messages.REASON_CHARS
    lines = [line for w in workers for line in w.lines]
    assert sum("dead-lettered" in line for line in lines) == len(bad)
    assert max(len(line) for line in lines) < 800
    assert job(client, maxed["jobId"])["status"] == "pending"


@pytest.mark.slow
def test_a_claim_lost_to_an_older_one_is_handed_back_pending(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """A crash that loses a redelivery's claim leaves the row as the earlier claim left it:
    processing, by a worker that is gone, with fewer attempts. The completion must hand the
    job back (it was acked and dropped: lost, processing for ever), pending again.

    Slow by design (about 3 s): two 1 s jobs, the claim taken away while the first runs."""
    created = post_order(client)
    jid = created["jobId"]
    # As if the worker of a first delivery had died (its message came back to the queue).
    gone = "UPDATE jobs SET status = 'processing', worker_id = 'w-gone', attempts = 1 WHERE id = %s"
    pg.execute(gone, [jid])
    child = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=1))
    eventually(lambda: job(client, jid)["workerId"] == "w1")
    assert job(client, jid)["attempts"] == 2
    pg.execute(gone, [jid])  # PostgreSQL restarted and lost w1's asynchronous claim
    os.kill(child.pid, signal.SIGTERM)  # w1 finishes, then stops rather than take it again
    assert child.proc.wait(10) == 0
    handed = job(client, jid)
    assert (handed["status"], handed["workerId"], handed["attempts"]) == ("pending", None, 1)
    assert rds.llen(keys.QUEUE) == 1
    kinds = [f["type"] for _, f in rds.xrange(keys.EVENTS) if f.get("job") == jid]
    assert "job_requeued" in kinds
    assert "job_lost" not in kinds
    sup.start_worker(WorkerSpec(worker_id="w2", job_seconds=0))
    eventually(lambda: job(client, jid)["status"] == "completed")
    final = job(client, jid)
    assert (final["workerId"], final["attempts"]) == ("w2", 2)


def test_a_release_never_clobbers_a_claim_made_since(
    client: httpx.Client, pg: psycopg.Connection
) -> None:
    created = post_order(client)  # no worker runs: the claims below are the only ones
    jid = created["jobId"]
    claim = {"worker": "w1", "instance": "1-a", "job": jid, "order": created["orderId"]}
    assert pg.execute(db.CLAIM_JOB, claim).fetchone() is not None
    status, owner, attempts, _, started, instance, *_ = pg.execute(db.JOB_STATUS, [jid]).fetchone()  # type: ignore[misc]
    assert (status, owner, attempts, instance) == ("processing", "w1", 1, "1-a")
    # w1 presumed dead: w2 takes the job over, and w1's attempt is recorded as crashed.
    takeover = {"worker": "w2", "instance": "2-b", "job": jid, "was_worker": "w1",
                "was_instance": "1-a", "was_attempt": 1, "was_started": started}  # fmt: skip
    assert pg.execute(db.TAKE_OVER_JOB, takeover).fetchone() is not None
    assert pg.execute(db.TAKE_OVER_JOB, takeover).fetchone() is None  # that claim is gone
    assert pg.execute(
        "SELECT attempt, worker_id, outcome FROM job_attempts WHERE job_id = %s", [jid]
    ).fetchall() == [(1, "w1", "crashed")]

    def release(worker: str, attempt: int) -> tuple[object, ...] | None:
        params = {"job": jid, "status": "processing", "worker": worker, "attempt": attempt}
        return pg.execute(db.RELEASE_JOB, params).fetchone()

    assert release("w1", 1) is None  # w1's claim, since redelivered to w2
    assert release("w2", 1) is None
    row = job(client, jid)
    assert (row["status"], row["workerId"], row["attempts"]) == ("processing", "w2", 2)
    assert release("w2", 2) is not None
    row = job(client, jid)
    assert (row["status"], row["workerId"], row["attempts"]) == ("pending", None, 2)
    assert row["startedAt"] is None
    assert client.get(f"/orders/{created['orderId']}").json()["status"] == "pending"


@pytest.mark.slow
def test_a_missing_table_is_waited_for_not_dead_lettered(
    settings: Settings,
    sup: Supervisor,
    client: httpx.Client,
    pg: psycopg.Connection,
    rds: redis.Redis,
) -> None:
    """PostgreSQL refusing every claim alike (no such table) is not the message's fault:
    dead-lettering would empty the whole queue into orders:dead. The worker waits."""
    child = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "completed")
    # A second job, written as the API writes it; its message is pushed by hand below.
    message = insert_job(settings.database_url, "job-away-1")
    pg.execute("ALTER TABLE jobs RENAME TO jobs_away")
    try:
        rds.lpush(keys.QUEUE, message)
        eventually(lambda: 'relation "jobs" does not exist' in child.tail())
        eventually(lambda: child.tail().count("retrying") >= 2)
        assert rds.llen(keys.DEAD) == 0
        assert rds.llen(keys.processing_key("w1")) == 1
    finally:
        pg.execute("ALTER TABLE jobs_away RENAME TO jobs")
    eventually(lambda: job(client, "job-away-1")["status"] == "completed", timeout=15)
    assert rds.llen(keys.DEAD) == 0
    assert child.alive()


def history(pg: psycopg.Connection, job_id: object) -> list[tuple[object, ...]]:
    """Every attempt of a job (job_history): (attempt, worker, outcome), in order."""
    return pg.execute(
        "SELECT attempt, worker_id, outcome FROM job_history WHERE job_id = %s ORDER BY attempt",
        [job_id],
    ).fetchall()


@pytest.mark.slow
def test_duplicates_of_a_job_a_live_worker_runs_are_dropped_not_taken_over(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """The issue's attack: two workers, a job running, its message pushed again 50 times.
    Its worker is alive, so every duplicate is dropped unworked: one attempt, completed, no
    crash (it used to end dead, "its worker died during each of its 5 attempts")."""
    sup.start_workers(2, WorkerSpec(job_seconds=1))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    owner = job(client, created["jobId"])["workerId"]
    message = orjson.dumps({"jobId": created["jobId"], "orderId": created["orderId"],
                            "enqueuedAt": "x"})  # fmt: skip
    for _ in range(50):
        rds.lpush(keys.QUEUE, message)
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=15)
    final = job(client, created["jobId"])
    assert (final["attempts"], final["workerId"]) == (1, owner)
    assert history(pg, created["jobId"]) == [(1, owner, "completed")]
    assert client.get(f"/orders/{created['orderId']}").json()["status"] == "completed"
    ids = [c.name for c in sup.children.values()]
    eventually(
        lambda: (
            rds.llen(keys.QUEUE) == 0 and all(rds.llen(keys.processing_key(w)) == 0 for w in ids)
        )
    )
    kinds = [f["type"] for _, f in rds.xrange(keys.EVENTS) if f.get("job") == created["jobId"]]
    assert (kinds.count("job_started"), kinds.count("job_finished")) == (1, 1)
    assert rds.llen(keys.DEAD) == 0
    tails = "\n".join(c.tail() for c in sup.children.values())
    assert "dropping this duplicate delivery" in tails
    assert "took over" not in tails


@pytest.mark.slow
def test_a_worker_restarted_with_its_id_takes_its_job_back_while_its_old_beat_lives(
    sup: Supervisor, client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    """kill -9 mid-job, the same id started again at once: the heartbeat key still exists
    (now the new run's), but it names another run than the claim's, so the job is taken
    back and the dead run's attempt recorded as crashed."""
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=5))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    old = rds.hget(keys.worker_key("w1"), keys.INSTANCE_FIELD)
    sup.kill("w1")
    assert rds.exists(keys.worker_key("w1"))  # the dead run's beat has not expired yet
    # Not waited for as ready: the dead run's beat says busy already.
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.2), wait=False)
    eventually(lambda: rds.hget(keys.worker_key("w1"), keys.INSTANCE_FIELD) not in (None, old))
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=10)
    assert history(pg, created["jobId"]) == [(1, "w1", "crashed"), (2, "w1", "completed")]


@pytest.mark.slow
def test_a_message_whose_job_or_order_is_not_in_postgresql_is_dead_at_first_sight(
    settings: Settings,
    sup: Supervisor,
    client: httpx.Client,
    pg: psycopg.Connection,
    rds: redis.Redis,
) -> None:
    """Each dead-lettered at its first delivery with a reason one can check, counting no
    attempt: an order deleted with its job; a message naming an order its job is not of; an
    order row gone while its job stays (the foreign key bypassed: that job used to cycle
    through claims and take-overs, end dead "its worker died during each of its 5 attempts",
    and be left out of `mqlab dead list`)."""
    from tests.test_cli import run

    gone = post_order(client)
    pg.execute("DELETE FROM orders WHERE id = %s", [gone["orderId"]])  # its job goes too
    real = post_order(client)
    forged = orjson.dumps({"jobId": real["jobId"], "orderId": 999999, "enqueuedAt": "x"})
    rds.lpush(keys.QUEUE, forged)
    orphan = post_order(client)
    fk = pg.execute(
        "SELECT conname FROM pg_constraint WHERE conrelid = 'jobs'::regclass AND contype = 'f'"
    ).fetchone()
    assert fk is not None
    pg.execute(f'ALTER TABLE jobs DROP CONSTRAINT "{fk[0]}"')
    try:
        pg.execute("DELETE FROM orders WHERE id = %s", [orphan["orderId"]])
        sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0))
        eventually(lambda: rds.llen(keys.DEAD) == 3 and rds.llen(keys.QUEUE) == 0)
        eventually(lambda: job(client, real["jobId"])["status"] == "completed")
        assert job(client, real["jobId"])["attempts"] == 1
        buried = job(client, orphan["jobId"])
        reason = (
            f"order {orphan['orderId']} of job {orphan['jobId']} does not exist in PostgreSQL "
            "(deleted while the job was pending)"
        )
        assert (buried["status"], buried["attempts"], buried["lastError"]) == ("dead", 0, reason)
        assert history(pg, orphan["jobId"]) == []
        letters = {
            messages.read_dead_letter(e.encode()).reason: messages.read_dead_letter(e.encode())
            for e in rds.lrange(keys.DEAD, 0, -1)
        }
        assert set(letters) == {
            f"no job {gone['jobId']} in PostgreSQL (order {gone['orderId']} does not exist either)",
            f"job {real['jobId']} is order {real['orderId']}'s, not order 999999's",
            reason,
        }
        assert letters[reason].job_id == orphan["jobId"]
        listed = run(settings, "dead", "list", columns=200)
        assert listed.returncode == 0, listed.stderr
        assert orphan["jobId"] in listed.stdout
        assert "is order" in listed.stdout and "no job" in listed.stdout
        purged = run(settings, "dead", "purge", "--yes")
        assert purged.returncode == 0, purged.stderr
        assert job(client, orphan["jobId"]).get("status") is None  # gone, with no order
    finally:
        pg.execute(
            "DELETE FROM jobs WHERE NOT EXISTS (SELECT FROM orders WHERE orders.id = order_id)"
        )
        pg.execute(
            f'ALTER TABLE jobs ADD CONSTRAINT "{fk[0]}" FOREIGN KEY (order_id) '
            "REFERENCES orders (id) ON DELETE CASCADE"
        )


@pytest.mark.slow
def test_a_second_worker_with_a_live_workers_id_refuses_to_start(
    settings: Settings,
    sup: Supervisor,
    client: httpx.Client,
    pg: psycopg.Connection,
    rds: redis.Redis,
) -> None:
    """At start a worker takes back what its id's previous run left in its processing list:
    with that run alive (the same id given twice), it would take a job in hand, which then
    looked abandoned and ran twice. It refuses instead, and the live worker goes on."""
    first = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=3))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    with Supervisor(settings) as other:  # a supervisor runs one child per name
        second = other.start_worker(WorkerSpec(worker_id="w1", job_seconds=0), wait=False)
        assert second.proc.wait(20) == 1
        eventually(lambda: "is in use by pid" in second.tail())
    assert first.alive()
    assert rds.hget(keys.worker_key("w1"), "pid") == str(first.pid)
    eventually(lambda: job(client, created["jobId"])["status"] == "completed", timeout=10)
    assert history(pg, created["jobId"]) == [(1, "w1", "completed")]
