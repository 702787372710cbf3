"""Kata 4's scenarios for real, at small sizes: a kill -9 row loses nothing, the kata's BLPOP
row loses the jobs in hand, a poison row's dead come back with the replay, and a row that
needs to stop a PostgreSQL this run does not own is skipped with its reason."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from mqlab.experiments import parse
from mqlab.figures.report import write
from mqlab.figures.results import Verdict
from mqlab.lab.runner import Runner
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings

SUITE = {
    "suite": {"name": "kata4-small", "job_seconds": 0.1},
    "api": {"max_latency_ms": 500},
    "row": [
        {"name": "kill", "orders": 90, "workers": 3, "kill_every": 0.8, "seed": 1},
        {"name": "blpop", "orders": 60, "workers": 3, "kill_every": 0.7, "seed": 1,
         "fetch": "blpop", "expect_loss": True},
        {"name": "poison", "orders": 12, "workers": 2, "poison_orders": 2,
         "replay_without_poison": True},
        {"name": "pg", "orders": 5, "workers": 1, "pg_stop_after": 0.5},
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_kata4_scenarios_keep_their_ledgers(
    settings: Settings, sup: Supervisor, tmp_path: Path
) -> None:
    """About 25 s: three short rows that kill workers, poison orders and replay them."""
    sup.start_api()
    suite = parse(SUITE)
    result = asyncio.run(Runner(settings, sup).run_suite(suite))
    rows = {r.row.name: r for r in result.rows}

    kill = rows["kill"].ledger
    assert kill is not None and kill.kills >= 1
    assert (kill.accepted, kill.completed, kill.lost, kill.completed_twice) == (90, 90, 0, 0)
    # A kill that lands on a worker between two jobs takes no job with it (seen on a loaded
    # machine: three kills, all between jobs); one that lands mid-job is recovered.
    assert bool(kill.recovery) == bool(kill.work_twice)
    if kill.work_twice:
        assert 0 < kill.recovery_max < 15  # the reaper's TTL + a pass
    assert rows["kill"].verdict is Verdict.OK, rows["kill"].reason

    blpop = rows["blpop"].ledger
    assert blpop is not None and blpop.kills >= 1
    assert blpop.lost >= 1 and blpop.completed + blpop.lost == 60  # lost at the kills
    assert rows["blpop"].verdict is Verdict.OK, rows["blpop"].reason

    poison = rows["poison"].ledger
    assert poison is not None and poison.replay is not None
    assert (poison.replay.dead_before, poison.replay.replayed) == (2, 2)
    assert (poison.completed, poison.dead, poison.lost, poison.crashed_workers) == (12, 0, 0, 0)
    assert rows["poison"].verdict is Verdict.OK, rows["poison"].reason

    assert rows["pg"].verdict is Verdict.SKIPPED and "PostgreSQL" in rows["pg"].reason
    assert result.passed, result.failures()

    written = write(result, tmp_path, {"redis": "r", "postgres": "p"}, "test")
    report = orjson.loads(written.json.read_bytes())
    assert [r["ledger"]["lost"] for r in report["rows"][:3]] == [0, blpop.lost, 0]
    assert "## The ledger" in written.markdown.read_text()
