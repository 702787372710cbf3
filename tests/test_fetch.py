"""The kata's BLPOP beside mqlab's reliable fetch: both work; only one survives a kill -9."""

from __future__ import annotations

import time

import httpx
import pytest
import redis
from typer.testing import CliRunner

from mqlab.faces.cli import app
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.protocol.scans import processing_lists_sync
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, job, post_order


@pytest.mark.slow
def test_a_blpop_worker_does_the_work(sup: Supervisor, client: httpx.Client) -> None:
    sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=0.05, fetch="blpop"))
    created = [post_order(client, f"item {n}") for n in range(5)]
    eventually(lambda: all(job(client, c["jobId"])["status"] == "completed" for c in created))
    assert [job(client, c["jobId"])["attempts"] for c in created] == [1] * 5


@pytest.mark.slow
def test_a_blpop_worker_killed_mid_job_loses_that_job(
    sup: Supervisor, client: httpx.Client, rds: redis.Redis
) -> None:
    """The lesson of Kata 4's BLPOP row: the message left Redis at the pop, so nothing is left
    to recover. Past the heartbeat's TTL, with another worker alive, the job still says
    processing and no Redis structure holds it."""
    w1 = sup.start_worker(WorkerSpec(worker_id="w1", job_seconds=30, fetch="blpop"))
    created = post_order(client)
    eventually(lambda: job(client, created["jobId"])["status"] == "processing")
    assert processing_lists_sync(rds) == []  # no processing list: nothing in flight in Redis
    sup.kill(w1.name)
    sup.start_worker(WorkerSpec(worker_id="w2", job_seconds=0.05, fetch="blpop"))
    time.sleep(keys.HEARTBEAT_TTL + 2)  # what a reliable worker's reaper would have needed
    assert job(client, created["jobId"])["status"] == "processing"
    assert rds.llen(keys.QUEUE) == 0 and rds.zcard(keys.DELAYED) == 0


def test_the_worker_refuses_an_unknown_fetch() -> None:
    result = CliRunner().invoke(app, ["worker", "--fetch", "lpop"])
    assert result.exit_code == 1 and "--fetch must be one of reliable, blpop" in result.output
