"""`mqlab dead list | show | replay | purge`, on the real servers, read at 80 columns."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
import redis

from mqlab import db
from mqlab.protocol import keys
from mqlab.protocol.messages import encode_message, read_dead_letter
from mqlab.settings import Settings
from tests.dead_helpers import make_dead, push_unparseable
from tests.helpers import insert_job
from tests.test_cli import run


@pytest.fixture
def raw(settings: Settings, clean: None) -> Iterator[redis.Redis]:
    """Redis answering bytes (dead letters are whatever was pushed), on emptied servers."""
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    client.close()


def dead_entries(raw: redis.Redis) -> list[str | None]:
    """The job id of each orders:dead entry (None: an entry that is no job's), newest first."""
    return [read_dead_letter(e).job_id for e in raw.lrange(keys.DEAD, 0, -1)]


def job_row(pg: psycopg.Connection, job_id: str) -> tuple:
    row = pg.execute(
        "SELECT j.status, j.attempts, j.replay_base, j.worker_id, j.finished_at, "
        "j.next_attempt_at, j.last_error, o.status FROM jobs j JOIN orders o "
        "ON o.id = j.order_id WHERE j.id = %s",
        [job_id],
    ).fetchone()
    assert row is not None
    return row


def fits(text: str) -> str:
    assert max(len(line) for line in text.splitlines()) <= 80, text
    return text


def test_replay_twice_queues_once(
    settings: Settings, raw: redis.Redis, pg: psycopg.Connection
) -> None:
    job_id, order_id = make_dead(settings.database_url, raw, attempts=3)
    push_unparseable(raw)
    out = run(settings, "dead", "replay", job_id, columns=80)
    assert out.returncode == 0, out.stderr
    assert f"'{job_id}': replayed" in out.stdout
    # PostgreSQL: pending again, its attempts counted afresh, the last error kept.
    status, attempts, base, worker, finished, due, error, order = job_row(pg, job_id)
    assert (status, attempts, base, worker, finished, due) == ("pending", 3, 3, None, None, None)
    assert error == "boom: transient failure"
    assert order == "pending"
    # Redis: its message on the queue, as the API writes it; its dead letter gone, the
    # unparseable entry left.
    enqueued = pg.execute("SELECT enqueued_at FROM jobs WHERE id = %s", [job_id]).fetchone()
    assert enqueued is not None
    assert raw.lrange(keys.QUEUE, 0, -1) == [
        encode_message(job_id, order_id, db.iso(enqueued[0]) or "")
    ]
    assert dead_entries(raw) == [None]

    again = run(settings, "dead", "replay", job_id, columns=80)
    assert again.returncode == 0, again.stderr
    assert f"'{job_id}': not dead (pending), left alone" in again.stdout
    assert raw.llen(keys.QUEUE) == 1
    assert dead_entries(raw) == [None]


@pytest.mark.slow
def test_replay_all_and_its_errors(
    settings: Settings, raw: redis.Redis, pg: psycopg.Connection
) -> None:
    dead = [make_dead(settings.database_url, raw)[0] for _ in range(3)]
    insert_job(settings.database_url, "job-alive")  # pending: --all leaves it alone
    push_unparseable(raw)
    out = run(settings, "dead", "replay", "--all", columns=80)
    assert out.returncode == 0, out.stderr
    for job_id in dead:
        assert f"'{job_id}': replayed" in out.stdout
    assert "3 replayed." in out.stdout
    assert raw.llen(keys.QUEUE) == 3
    assert dead_entries(raw) == [None]
    rows = pg.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
    assert rows == [("pending", 4)]

    nothing = run(settings, "dead", "replay", "--all", columns=80)
    assert nothing.returncode == 0 and "No dead jobs to replay." in nothing.stdout
    unknown = run(settings, "dead", "replay", dead[0], "job-nope", columns=80)
    assert unknown.returncode == 1
    assert "'job-nope': no such job" in unknown.stderr
    assert f"'{dead[0]}': not dead (pending)" in unknown.stdout
    for args in ((), ("--all", dead[0])):
        usage = run(settings, "dead", "replay", *args, columns=80)
        assert usage.returncode == 2, usage
        assert "name the jobs to replay, or give --all" in usage.stderr
    assert raw.llen(keys.QUEUE) == 3


@pytest.mark.slow
def test_purge_asks_then_forgets_the_dead(
    settings: Settings, raw: redis.Redis, pg: psycopg.Connection
) -> None:
    dead = [make_dead(settings.database_url, raw) for _ in range(2)]
    insert_job(settings.database_url, "job-alive")
    push_unparseable(raw)
    refused = subprocess_input(settings, "n\n", "dead", "purge")
    assert refused.returncode == 1
    assert "Delete 2 dead job(s) with their orders and attempts, and 3" in refused.stdout
    assert pg.execute("SELECT count(*) FROM orders").fetchone() == (3,)
    assert raw.llen(keys.DEAD) == 3

    out = run(settings, "dead", "purge", "--yes", columns=80)
    assert out.returncode == 0, out.stderr
    orders = ", ".join(str(order_id) for _, order_id in dead)
    said = " ".join(out.stdout.split())
    assert f"Deleted 2 dead job(s) with their orders and attempts (orders {orders})" in said
    assert "and 3 dead-letter entries." in said
    assert pg.execute("SELECT id FROM jobs").fetchall() == [("job-alive",)]
    assert pg.execute("SELECT count(*) FROM job_attempts").fetchone() == (0,)
    assert pg.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert raw.llen(keys.DEAD) == 0
    empty = run(settings, "dead", "purge", columns=80)  # nothing to ask about
    assert empty.returncode == 0 and "Nothing to purge" in empty.stdout


def subprocess_input(settings: Settings, text: str, *args: str) -> subprocess.CompletedProcess:
    """`mqlab ARGS` at 80 columns, answering its question with `text`."""
    env = {**os.environ, **settings.to_env(), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "mqlab", *args],
        input=text,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_list_shows_dead_jobs_and_unparseable_entries_with_their_reasons(
    settings: Settings, raw: redis.Redis
) -> None:
    old, _ = make_dead(settings.database_url, raw, product="Laptop", error="gave up [/]")
    new, _ = make_dead(settings.database_url, raw, product="poison pill", error="poisoned")
    push_unparseable(raw, b"\xff\xfe [bold] by hand", "not UTF-8 (byte 0xff at 0)")
    out = run(settings, "dead", "list", columns=80)
    assert out.returncode == 0, out.stderr
    text = fits(out.stdout)
    assert "dead jobs (2 of 2, newest first)" in text
    rows = [line for line in text.splitlines() if line.startswith("│")]
    jobs = [line for line in rows if "job-" in line]
    assert len(jobs) == 2 and new in jobs[0] and old in jobs[1], text
    assert "poison" in jobs[0] and "poisoned" in jobs[0] and "3" in jobs[0]
    assert "gave up [/]" in jobs[1]
    assert "other dead letters, not jobs (1" in text
    others = [line for line in rows if "not UTF-8" in line]
    assert len(others) == 1 and r"\xff\xfe [bold]" in others[0], text


def test_list_with_nothing_dead(settings: Settings, raw: redis.Redis) -> None:
    out = run(settings, "dead", "list", columns=80)
    assert out.returncode == 0, out.stderr
    assert "No dead jobs." in out.stdout
    assert f"No other dead letters on {keys.DEAD}." in out.stdout


@pytest.mark.slow
def test_show_tells_a_jobs_story(settings: Settings, raw: redis.Redis) -> None:
    job_id, order_id = make_dead(settings.database_url, raw, attempts=2, error="kaput")
    out = run(settings, "dead", "show", job_id, columns=80)
    assert out.returncode == 0, out.stderr
    text = fits(out.stdout)
    assert f"job {job_id}" in text
    assert "│ status" in text and "dead" in text
    assert f"#{order_id} 1 x Widget at 5.0" in text
    attempts = [line for line in text.splitlines() if "kaput (attempt" in line]
    assert len(attempts) == 2 and "failed" in attempts[0], text
    assert attempts[0].split("│")[1].strip() == "1"
    assert "its dead letters (1; orders:dead)" in text

    missing = run(settings, "dead", "show", "job-nope", columns=80)
    assert missing.returncode == 1
    assert "no such job: 'job-nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_a_server_that_does_not_answer_is_a_clear_error(settings: Settings) -> None:
    broken = Settings("redis://127.0.0.1:1/0", settings.database_url)
    out = run(broken, "dead", "list", columns=80)
    assert out.returncode == 1
    assert "Redis does not answer" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_show_says_what_a_crash_and_a_replay_did(
    settings: Settings, raw: redis.Redis, pg: psycopg.Connection
) -> None:
    """Attempt 1: w1 died 1 s in, and w2 found it 11 s after it started and took it over;
    attempt 2 failed, the job was replayed, and attempt 3 (its first since the replay) failed too.
    Before: the crash "took 11.0s", with no error, and attempt 3 was just "3"."""
    job_id, _ = make_dead(settings.database_url, raw, attempts=3, error="kaput")
    t0 = "2026-01-01 12:00:00+00"
    pg.execute(
        "UPDATE job_attempts SET outcome = 'crashed', error = NULL, worker_id = 'w1', "
        "started_at = %s, finished_at = %s::timestamptz + interval '11 s' "
        "WHERE job_id = %s AND attempt = 1",
        [t0, t0, job_id],
    )
    pg.execute(
        "UPDATE job_attempts SET worker_id = 'w2', started_at = %s::timestamptz + interval "
        "'11 s', finished_at = %s::timestamptz + interval '12 s' WHERE job_id = %s AND "
        "attempt = 2",
        [t0, t0, job_id],
    )
    pg.execute("UPDATE jobs SET replay_base = 2 WHERE id = %s", [job_id])
    out = run(settings, "dead", "show", job_id, columns=80)
    assert out.returncode == 0, out.stderr
    text = fits(out.stdout)
    table = text[text.index("attempts (UTC)") : text.index("its dead letters")]
    rows = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    crashed = next(r for r in rows if r[1].strip() == "1")
    assert crashed[3].strip() == "-", text  # took: not known (11 s was when it was found)
    assert crashed[4].strip() == "crashed"
    # The last column wraps: its words, read across the rows of the crashed attempt.
    start = rows.index(crashed)
    said = " ".join(r[6].strip() for r in rows[start : start + 6] if r[1].strip() in ("", "1"))
    assert (
        "no end recorded: worker w1 did not finish it (died, or was presumed dead); found "
        "unfinished at 12:00:11 by w2, who took it over"
    ) in said, text
    assert [r[1].strip() for r in rows if r[1].strip()][-1] == "3 (1)", text
    assert "replayed after attempt 2" in text


def _column(text: str, index: int) -> list[str]:
    """The words of column `index` of a table's rows, lines folded by the table joined."""
    rows = [line.split("│") for line in text.splitlines() if line.startswith("│")]
    return " ".join(r[index].strip() for r in rows if len(r) > index).split()


@pytest.mark.slow
def test_list_and_show_never_cut_a_product_an_error_or_a_worker_id_at_80_columns(
    settings: Settings, raw: redis.Redis
) -> None:
    """They ended the product and the error in an ellipsis at 80 columns: what was cut
    could not be read anywhere."""
    product = "Portable espresso machine with a very long product name, model 2026"
    error = "transient failure: the payment service answered 504 after 30 s, retry later"
    job_id, _ = make_dead(settings.database_url, raw, product=product, error=error)
    listed = fits(run(settings, "dead", "list", columns=80).stdout)
    assert "…" not in listed, listed
    assert " ".join(_column(listed, 5)).startswith(product), listed
    assert error in " ".join(_column(listed, 6)), listed
    shown = fits(run(settings, "dead", "show", job_id, columns=80).stdout)
    # Whole but for the dead letter's message: a preview of the queue entry (its job is above).
    assert "…" not in shown[: shown.index("its dead letters")], shown
