"""After `mqlab run-experiment` the database is empty again and ids start at 1 (the README's
kata walkthrough follows it), while the result keeps every figure."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import redis

from mqlab.experiments import parse
from mqlab.results import Verdict
from mqlab.runner import Runner
from mqlab.settings import Settings
from mqlab.supervisor import Supervisor
from tests.conftest import counts
from tests.helpers import post_order


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
