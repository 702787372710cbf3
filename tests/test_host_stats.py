"""Hosts: a process's host name (MQLAB_HOST), and the workers and throughput of each host in
/stats and `mqlab status`."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis
from rich.console import Console

from mqlab.faces.status_view import render
from mqlab.lab.supervisor import Supervisor
from mqlab.procs import spawn, terminate
from mqlab.protocol import keys
from mqlab.protocol.scans import live_worker_ids_sync
from mqlab.settings import Settings
from mqlab.system.host import ENV_HOST, HostError, host_name
from mqlab.system.observe import GONE, Snapshot, WorkerInfo, host_of, hosts
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, post_order

BAD_HOSTS = ["", "host a", "a/b", "x" * 64, "(gone)", "hôte", "a:b"]


def test_the_host_is_mqlab_host_else_the_machines() -> None:
    assert host_name({}) == socket.gethostname()
    assert host_name({ENV_HOST: "hosta"}) == "hosta"
    assert host_name({ENV_HOST: "lab-2.b_c"}) == "lab-2.b_c"
    assert host_name({ENV_HOST: "x" * 63}) == "x" * 63


@pytest.mark.parametrize("bad", BAD_HOSTS)
def test_a_bad_mqlab_host_is_refused_saying_what_to_give(bad: str) -> None:
    with pytest.raises(HostError, match=r"MQLAB_HOST=.* is not a host name: give 1 to 63"):
        host_name({ENV_HOST: bad})


@pytest.mark.parametrize("command", ["worker", "api"])
def test_worker_and_api_exit_on_a_bad_mqlab_host(settings: Settings, command: str) -> None:
    env = {**os.environ, **settings.to_env(), ENV_HOST: "host a"}
    done = subprocess.run(
        [sys.executable, "-m", "mqlab", command], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 1, done
    err = done.stderr.decode()
    assert "MQLAB_HOST='host a' is not a host name" in err, err
    assert "Traceback" not in err


@pytest.fixture
def rds(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    client.close()


def test_a_worker_names_itself_and_its_host_by_mqlab_host(
    settings: Settings, clean: None, rds: redis.Redis
) -> None:
    env = {**os.environ, **settings.to_env(), ENV_HOST: "hosta"}
    proc = spawn([sys.executable, "-m", "mqlab", "worker"], owned=True, env=env)
    try:
        wid = f"hosta-{proc.pid}"
        eventually(lambda: wid in live_worker_ids_sync(rds), timeout=30, what=wid)
        assert rds.hget(keys.worker_key(wid), "host") == "hosta"
    finally:
        terminate(proc.pid)
        proc.wait(10)  # reaped: psutil saw it go, the Popen has not


def _info(wid: str, host: str, state: str = "idle", done: int = 0) -> WorkerInfo:
    return WorkerInfo(wid, 1, host, state, "", 0, done, 0, 0, 0)


def test_a_gone_workers_jobs_count_under_the_host_its_id_names_else_gone() -> None:
    live = {"hosta-w1": "hosta", "a-b-w1": "a-b", "a-w1": "a", "w1": "box"}
    assert host_of("hosta-w1", live) == "hosta"
    assert host_of("hosta-w9", live) == "hosta"  # gone, named for a live host
    assert host_of("hosta-4242", live) == "hosta"  # `mqlab worker`'s default id
    assert host_of("a-b-w2", live) == "a-b"  # the longest host it names
    assert host_of("hostz-w1", live) == GONE
    assert host_of("w7", live) == GONE  # a plain lab id names no host
    workers = [
        _info("hosta-w1", "hosta", "busy", 5),
        _info("hosta-w2", "hosta", "idle", 2),
        _info("hostb-w1", "hostb", "busy", 4),
    ]
    rows = hosts(workers, {"hosta-w1": 10, "hosta-w3": 5, "hostb-w1": 20, "hostz-w1": 3})
    assert [(h.host, h.workers, h.busy, h.jobs_done, h.per_second) for h in rows] == [
        ("hosta", 2, 1, 7, 1.5),
        ("hostb", 1, 1, 4, 2.0),
        (GONE, 0, 0, 0, 0.3),
    ]
    assert [h.host for h in hosts(workers, {})] == ["hosta", "hostb"]  # no (gone) row: none


@pytest.fixture
def two_hosts(sup: Supervisor, monkeypatch: pytest.MonkeyPatch) -> Supervisor:
    """hosta-w1, hosta-w2 on hosta and hostb-w1 on hostb (the supervisor's children get its
    environment, MQLAB_HOST included, as it is when each starts)."""
    for host, ids in (("hosta", ["hosta-w1", "hosta-w2"]), ("hostb", ["hostb-w1"])):
        monkeypatch.setenv(ENV_HOST, host)
        for wid in ids:
            sup.start_worker(WorkerSpec(worker_id=wid, job_seconds=0.1), wait=False)
    sup.wait_workers_ready(["hosta-w1", "hosta-w2", "hostb-w1"])
    return sup


def test_stats_gives_each_hosts_workers_and_throughput(
    two_hosts: Supervisor, client: httpx.Client, settings: Settings
) -> None:
    for _ in range(12):
        post_order(client)
    stats: dict[str, object] = {}

    def all_done() -> bool:
        stats.update(client.get("/stats").json())
        return stats["jobs"]["completed"] == 12  # type: ignore[index]

    eventually(all_done, timeout=30, what="12 jobs completed")
    by_host = {h["host"]: h for h in stats["hosts"]}  # type: ignore[attr-defined]
    assert [h["host"] for h in stats["hosts"]] == ["hosta", "hostb"]  # type: ignore[attr-defined]
    assert by_host["hosta"]["workers"] == 2 and by_host["hostb"]["workers"] == 1
    assert {w["id"]: w["host"] for w in stats["workers"]} == {  # type: ignore[attr-defined]
        "hosta-w1": "hosta",
        "hosta-w2": "hosta",
        "hostb-w1": "hostb",
    }
    # Each host's completions, by PostgreSQL's jobs.worker_id: all 12 finished well within
    # the last 10 s (0.1 s jobs on 3 workers), so jobs/s x 10 is each host's count.
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT split_part(worker_id, '-', 1), count(*) FROM jobs GROUP BY 1"
        ).fetchall()
    counted = {host: n for host, n in rows}
    assert sum(counted.values()) == 12
    for host in ("hosta", "hostb"):
        assert by_host[host]["perSecond"] == pytest.approx(counted.get(host, 0) / 10)
        # The heartbeats' jobs done: the same jobs, as the workers counted them.
        eventually(
            lambda host=host: (
                next(h for h in client.get("/stats").json()["hosts"] if h["host"] == host)[
                    "jobsDone"
                ]
                == counted.get(host, 0)
            ),
            timeout=10,
            what=f"{host}'s heartbeats counting its jobs",
        )


def _completed(url: str, ages: dict[str, list[float]]) -> None:
    """Completed jobs, each with its worker id and how many seconds ago it finished."""
    with psycopg.connect(url, autocommit=True) as conn:
        for worker, seconds in ages.items():
            for ago in seconds:
                (order,) = conn.execute(
                    "INSERT INTO orders (product, quantity, price, status) "
                    "VALUES ('x', 1, 1, 'completed') RETURNING id"
                ).fetchone() or (0,)
                conn.execute(
                    "INSERT INTO jobs (id, order_id, status, worker_id, attempts, started_at, "
                    "finished_at) VALUES (%s, %s, 'completed', %s, 1, "
                    "now() - make_interval(secs => %s + 0.1), now() - make_interval(secs => %s))",
                    (f"job-{order}-1", order, worker, ago, ago),
                )


def test_a_gone_workers_jobs_count_under_its_host_else_under_gone(
    two_hosts: Supervisor, client: httpx.Client, settings: Settings
) -> None:
    """hosta-w9 is not live but hosta is: its jobs are hosta's; hostq has no live worker: its
    jobs are (gone)'s. A job finished 11 s ago counts nowhere."""
    _completed(
        settings.database_url,
        {"hosta-w9": [1, 2], "hosta-w1": [0.5, 11], "hostb-w1": [1, 2, 3], "hostq-w1": [1]},
    )
    stats = client.get("/stats").json()
    rates = [(h["host"], h["workers"], h["perSecond"]) for h in stats["hosts"]]
    assert rates == [
        ("hosta", 2, pytest.approx(0.3)),
        ("hostb", 1, pytest.approx(0.3)),
        (GONE, 0, pytest.approx(0.1)),
    ]


def _status_text(snap: Snapshot) -> str:
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(render(snap, [], 80))
    assert isinstance(console.file, io.StringIO)
    return console.file.getvalue()


def test_status_groups_the_workers_by_host_and_lists_the_hosts_at_80_columns() -> None:
    now = time.time()
    job = "job-4-1796330055312"
    workers = [
        WorkerInfo("hosta-w1", 123456, "hosta", "busy", job, now - 1.2, 12, now - 9, now, 1),
        WorkerInfo("hosta-w2", 123457, "hosta", "idle", "", 0, 3, now - 9, now, 0),
        WorkerInfo("hostb-w1", 123458, "hostb", "busy", job, now - 0.4, 7, now - 9, now, 1),
    ]
    by_host = hosts(workers, {"hosta-w1": 40, "hostb-w1": 12, "hostz-w3": 3})
    out = _status_text(Snapshot(now, 3, 1, 0, workers, {"completed": 10}, hosts=by_host))
    assert max(len(line) for line in out.splitlines()) <= 80, out
    lines = [line.strip("│ ") for line in out.splitlines()]
    # Each host's line, then its workers.
    order = [line.split()[0] for line in lines if line.split() and line.split()[0][:4] == "host"]
    assert order[:5] == ["hosta", "hosta-w1", "hosta-w2", "hostb", "hostb-w1"], out
    assert job in out  # whole
    table = out[out.index("hosts (jobs/s") : out.index("orders by")]
    rows = [line.split("│") for line in table.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in row[1:-1]] for row in rows]
    assert cells == [
        ["hosta", "2", "1", "15", "4.0"],
        ["hostb", "1", "1", "7", "1.2"],
        [GONE, "0", "0", "0", "0.3"],
    ], table


def test_status_with_one_host_shows_no_host() -> None:
    now = time.time()
    workers = [WorkerInfo("w1", 1, "box", "idle", "", 0, 3, now, now, 0)]
    out = _status_text(Snapshot(now, 0, 0, 0, workers, {}, hosts=hosts(workers, {"w1": 5})))
    assert "hosts" not in out and "box" not in out
