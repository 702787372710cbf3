"""After `mqlab run-experiment` the database is empty again and ids start at 1 (the README's
kata walkthrough follows it), while the result keeps every figure."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest
import redis

from mqlab.experiments import load, parse
from mqlab.figures.results import Verdict
from mqlab.lab.runner import Runner
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from tests.conftest import counts
from tests.helpers import insert_job, post_order
from tests.results_data import serial_run, suite_result


@pytest.mark.slow
def test_a_run_that_leaves_clean_keeps_its_figures_and_nothing_else(
    settings: Settings, sup: Supervisor, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    sup.start_api()
    suite = parse({"row": [{"name": "three", "orders": 3, "workers": 2, "job_seconds": 0.02}]})
    result = asyncio.run(Runner(settings, sup).run_suite(suite, leave_clean=True))

    row = result.rows[0]
    assert row.verdict is Verdict.MEASURED
    assert sorted(j.order_id for j in row.runs[0].jobs) == [1, 2, 3]
    assert counts(pg, rds) == {"orders": 0, "jobs": 0, "queue": 0}
    assert sup.api_url is not None
    with httpx.Client(base_url=sup.api_url, timeout=10) as client:
        assert post_order(client)["orderId"] == 1


def test_a_run_with_a_row_that_timed_out_leaves_its_data(
    settings: Settings, sup: Supervisor, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    suite = load("kata3")
    runs = [[serial_run(row, 2.0, [1.0] * row.orders)] for row in suite.rows]
    runs[-1] = [serial_run(suite.rows[-1], 6.0, [1.0] * 10, completed=4, timed_out=True)]
    late = suite_result(suite, runs)
    insert_job(settings.database_url, "job-1-1")
    runner = Runner(settings, sup)
    assert asyncio.run(runner.clean_after(late)) is False
    assert counts(pg, rds)["jobs"] == 1, "its jobs may still be in a worker's hands"
    runs[-1] = [serial_run(suite.rows[-1], 6.0, [1.0] * 10)]
    assert asyncio.run(runner.clean_after(suite_result(suite, runs))) is True
    assert counts(pg, rds)["jobs"] == 0
