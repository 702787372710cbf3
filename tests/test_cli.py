"""The commands a person types: status, reset, and a clear error when the port is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import httpx
import psycopg
import pytest

from mqlab.settings import Settings
from mqlab.supervisor import Supervisor
from tests.helpers import eventually, post_order


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url, "COLUMNS": "160"}
    )
    return subprocess.run(
        [sys.executable, "-m", "mqlab", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_status_shows_queue_workers_and_counts(
    settings: Settings, sup: Supervisor, client: httpx.Client
) -> None:
    for i in range(3):
        post_order(client, f"Item{i}")
    sup.start_worker("w7", job_seconds=30)
    eventually(lambda: client.get("/stats").json()["jobs"]["processing"] == 1)
    out = run(settings, "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "orders:queue" in text
    assert "w7" in text
    assert "busy" in text
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    ]
    assert ["2", "1", "0", "1"] in rows  # waiting, in flight, dead letters, workers
    assert ["2", "1", "0", "0", "0"] in rows  # orders: pending, processing, completed, ...
    assert "pending" in text
    assert "processing" in text


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9"])
def test_worker_refuses_a_job_time_that_is_not_a_sane_number_of_seconds(
    settings: Settings, value: str
) -> None:
    out = run(settings, "worker", f"--job-seconds={value}")
    assert out.returncode == 2
    assert "--job-seconds" in out.stderr
    assert "must be a number of seconds from 0 to 86400" in out.stderr
    assert "Traceback" not in out.stderr


def test_reset_empties_everything(
    settings: Settings, client: httpx.Client, pg: psycopg.Connection
) -> None:
    post_order(client)
    out = run(settings, "reset", "--yes")
    assert out.returncode == 0, out.stderr
    row = pg.execute("SELECT count(*) FROM orders").fetchone()
    assert row == (0,)
    assert client.get("/stats").json()["queueDepth"] == 0


def test_api_refuses_a_taken_port_clearly(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = run(settings, "api", "--port", str(port))
    assert out.returncode == 1
    assert f"port {port}" in out.stderr
    assert "taken" in out.stderr
    assert "Traceback" not in out.stderr


def test_worker_rejects_an_unknown_work_kind(settings: Settings) -> None:
    out = run(settings, "worker", "--work", "dance")
    assert out.returncode == 1
    assert "--work must be one of sleep, cpu" in out.stderr
