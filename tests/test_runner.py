"""The experiment runner: a short real run, its report against the database, and no leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import psutil
import psycopg
import pytest

from mqlab.experiments import load, parse
from mqlab.figures.progress import Progress
from mqlab.figures.report import write
from mqlab.figures.stats import PERCENTILES, label
from mqlab.lab.runner import Runner
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from tests.helpers import eventually


@pytest.mark.slow
def test_a_short_kata_run_reports_what_the_database_holds(
    settings: Settings, sup: Supervisor, pg: psycopg.Connection, tmp_path: Path
) -> None:
    """The report of a kata run holds every job the database recorded, row by row.

    Slow by design (about 5 s): the kata's three rows for real, with 0.1 s jobs."""
    sup.start_api()
    seen: list[Progress] = []
    suite = load("kata3").with_job_seconds(0.1)
    result = asyncio.run(Runner(settings, sup, on_progress=seen.append).run_suite(suite))
    written = write(result, tmp_path, {"redis": "r", "postgres": "p"}, "test")

    assert [r.verdict for r in result.rows] != []
    assert {p.phase for p in seen} >= {"workers", "firing", "waiting", "done"}
    report = orjson.loads(written.json.read_bytes())
    assert [r["name"] for r in report["rows"]] == [r.name for r in suite.rows]
    for row in report["rows"]:
        assert len(row["jobs"]) == row["orders"]
        assert all(j["status"] == "completed" for j in row["jobs"])
        waves = -(-row["orders"] // row["workers"])
        assert row["idealSeconds"] == pytest.approx(waves * row["jobSeconds"])
        assert row["makespanSeconds"] >= row["idealSeconds"]
        assert set(row["apiLatencyMs"]) >= {*map(label, PERCENTILES), "max"}
        assert sum(row["perWorker"].values()) == row["orders"]
        assert row["verdict"] in ("ok", "slow")
    # The last row's jobs are still in the database: the JSON must agree with it exactly.
    last = report["rows"][-1]
    db_jobs = pg.execute(
        "SELECT id, worker_id, extract(epoch FROM started_at)::float8, "
        "extract(epoch FROM finished_at)::float8 FROM jobs ORDER BY id"
    ).fetchall()
    json_jobs = sorted(
        (j["jobId"], j["workerId"], j["startedAt"], j["finishedAt"]) for j in last["jobs"]
    )
    assert [tuple(r) for r in db_jobs] == json_jobs
    makespan = max(j["finishedAt"] for j in last["jobs"]) - last["runs"][0]["firstSentAt"]
    assert last["makespanSeconds"] == pytest.approx(makespan)
    # 10 orders over 4 workers in three waves: 3 + 3 + 2 + 2.
    assert sorted(last["perWorker"].values()) == [2, 2, 3, 3]
    md = written.markdown.read_text()
    assert "## The kata's table" in md
    assert "| API responds (202) | < 50 ms | - | **max " in md
    assert written.latest.read_text() == md
    for svg in tmp_path.glob("*.svg"):
        assert svg.read_text().startswith("<svg")


@pytest.mark.slow
@pytest.mark.parametrize("restart_ids", [True, False])
def test_order_ids_restart_per_row_in_reports_and_keep_counting_in_the_tui(
    settings: Settings, sup: Supervisor, restart_ids: bool
) -> None:
    """The TUI's lanes span rows: with each row's ids from 1 again, a lane showed #1 twice."""
    sup.start_api()
    rows = [{"name": n, "orders": 2, "workers": 1, "job_seconds": 0.02} for n in ("a", "b")]
    runner = Runner(settings, sup, restart_ids=restart_ids)
    result = asyncio.run(runner.run_suite(parse({"row": rows})))
    ids = [sorted(j.order_id for j in row.runs[0].jobs) for row in result.rows]
    assert ids == ([[1, 2], [1, 2]] if restart_ids else [[1, 2], [3, 4]])


@pytest.mark.slow
def test_repeat_reports_median_min_and_max(
    settings: Settings, sup: Supervisor, tmp_path: Path
) -> None:
    sup.start_api()
    suite = parse({"row": [{"name": "two", "orders": 2, "workers": 2, "job_seconds": 0.05}]})
    result = asyncio.run(Runner(settings, sup).run_suite(suite, repeat=3))
    row = result.rows[0]
    assert len(row.runs) == 3
    assert min(row.makespans) <= row.makespan <= max(row.makespans)
    assert row.verdict == "measured"


def _descendants(pid: int) -> list[psutil.Process]:
    return psutil.Process(pid).children(recursive=True)


MQLAB_WORKER = "-m mqlab worker "


def _cmd(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


@pytest.fixture(scope="module")
def runner_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MQLAB_HOME for the runs below: the first makes its servers' data, the next ones
    start from it (as a person's next run would), which spares a new cluster each."""
    return tmp_path_factory.mktemp("home")


# SIGKILL last: the runs before it stop cleanly, so that each finds the home as a run leaves it.
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_killing_the_runner_mid_run_leaves_no_process(
    runner_home: Path, sig: signal.Signals
) -> None:
    """Its own embedded servers, API and workers all go, whatever signal ends the runner.

    Slow by design (a few seconds each): a real `mqlab run-experiment` starts servers of its
    own, in a home of its own (shared by the three runs), and a graceful stop lets the
    workers finish their job (1 s: short, so that the stop is quick, and still long enough
    that the signal comes mid-job).
    """
    home = runner_home
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["MQLAB_HOME"] = str(home)
    runner = subprocess.Popen(
        [sys.executable, "-m", "mqlab", "run-experiment", "--job-seconds", "1",
         "--out", str(home / "out")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def mid_run() -> list[psutil.Process]:
            """Every kind of process a run has, once they are all up."""
            kids = _descendants(runner.pid)
            kinds = " ".join(_cmd(k) for k in kids)
            # "-m mqlab worker": PostgreSQL 18's "postgres: io worker N" must not count.
            names = ("valkey-server", "postgres", "-m mqlab api ", MQLAB_WORKER)
            return kids if all(name in kinds for name in names) else []

        kids = eventually(mid_run, timeout=60, interval=0.2)
        runner.send_signal(sig)
        runner.wait(60)

        def all_gone() -> bool:
            return not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]

        eventually(all_gone, timeout=20, interval=0.2)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
