"""`mqlab services up | down | status` on a home of its own, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from mqlab.lab import services
from mqlab.lab.services.home import read_state
from mqlab.lab.supervisor import Supervisor
from mqlab.procs import pid_alive
from mqlab.protocol import keys
from mqlab.settings import Settings
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, post_order


def mqlab(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    full_env.update({"MQLAB_HOME": str(home), "COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "mqlab", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=90,
    )


def state(home: Path) -> dict:
    return json.loads((home / "services.json").read_text())


@pytest.mark.slow
def test_up_is_idempotent_status_reports_and_down_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Slow by design: four runs of the real CLI (a Python start each) on a fresh home, whose
    first `up` makes its servers' data."""
    home = tmp_path_factory.mktemp("home")
    first = mqlab(home, "services", "up")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("started") == 2
    pids = {name: rec["pid"] for name, rec in state(home).items()}
    try:
        for rec in state(home).values():
            assert rec["port"] not in (6379, 5432, 3000)
        again = mqlab(home, "services", "up")
        assert again.returncode == 0
        assert again.stdout.count("running") == 2
        assert {name: rec["pid"] for name, rec in state(home).items()} == pids
        shown = mqlab(home, "services", "status")
        assert "Valkey 9." in shown.stdout
        assert "PostgreSQL 18" in shown.stdout
        assert shown.stdout.count(" ok ") == 2
        for pid in pids.values():
            assert pid_alive(pid)
    finally:
        down = mqlab(home, "services", "down")
    assert down.returncode == 0
    assert down.stdout.count("stopped") == 2
    for pid in pids.values():
        assert not pid_alive(pid)
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if any(str(home) in part for part in (p.info["cmdline"] or []))
    ]
    assert leftovers == []


@pytest.mark.slow
def test_a_crashed_server_is_detected_as_stale_and_restarted(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Slow by design: the real CLI, four times, on a fresh home of its own."""
    home = tmp_path_factory.mktemp("home")
    assert mqlab(home, "services", "up").returncode == 0
    try:
        redis_pid = state(home)["redis"]["pid"]
        os.kill(redis_pid, signal.SIGKILL)
        psutil.Process(redis_pid).wait(5) if psutil.pid_exists(redis_pid) else None
        shown = mqlab(home, "services", "status")
        assert "stale" in shown.stdout
        assert "redis" not in state(home)
        up = mqlab(home, "services", "up")
        assert up.returncode == 0
        assert "started" in up.stdout
        assert state(home)["redis"]["pid"] != redis_pid
    finally:
        mqlab(home, "services", "down")


@pytest.mark.slow
def test_commands_say_how_to_get_servers_when_none_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Slow by design: three runs of the real CLI, a Python start each."""
    home = tmp_path_factory.mktemp("home")
    for command in (["worker"], ["api"], ["status"]):
        res = mqlab(home, *command)
        assert res.returncode == 1
        assert "mqlab services up" in res.stderr
        assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_down_then_up_keeps_the_urls_and_the_api_and_worker_reconnect(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A running API and worker need no restart when the servers come back.

    Slow by design: servers of a home of its own, stopped and started again, and an API and a
    worker that must find them again through their reconnect backoff.
    """
    base = tmp_path_factory.mktemp("keep", numbered=True)
    services.up(owned=True, base=base)
    try:
        first = read_state(base)
        settings = Settings(first["redis"]["url"], first["postgres"]["url"])
        with Supervisor(settings) as sup, httpx.Client(timeout=5) as client:
            sup.start_api()
            sup.start_worker(WorkerSpec(job_seconds=0.05))
            url = f"{sup.api_url}/orders"
            with httpx.Client(base_url=sup.api_url or "", timeout=5) as api:
                job = post_order(api)["jobId"]
            eventually(
                lambda: client.get(f"{sup.api_url}/jobs/{job}").json()["status"] == "completed"
            )
            services.down(base=base)
            services.up(owned=True, base=base)
            again = read_state(base)
            assert [again[n]["url"] for n in ("redis", "postgres")] == [
                first[n]["url"] for n in ("redis", "postgres")
            ]

            def accepted() -> str | None:
                res = client.post(url, json={"product": "back", "quantity": 1, "price": 1})
                return res.json()["jobId"] if res.status_code == 202 else None

            job = eventually(accepted, timeout=30, interval=0.2)
            eventually(
                lambda: client.get(f"{sup.api_url}/jobs/{job}").json()["status"] == "completed",
                timeout=30,
            )
    finally:
        services.down(base=base)


@pytest.mark.skipif(
    bool(os.environ.get("REDIS_URL")), reason="the embedded Valkey's ACL, not a REDIS_URL one's"
)
def test_the_app_user_runs_only_the_commands_mqlab_uses(rds: redis.Redis) -> None:
    """Issue 17 (7): the app's credentials could SWAPDB and FUNCTION LOAD. Now everything
    outside valkey_server.APP_COMMANDS is refused, directly or from a script."""
    library = "#!lua name=planted\nserver.register_function('planted', function() return 1 end)"
    refused = [
        ["SWAPDB", "0", "1"], ["FUNCTION", "LOAD", library], ["FUNCTION", "FLUSH"],
        ["FCALL", "planted", "0"], ["FLUSHDB"], ["KEYS", "*"], ["SELECT", "1"],
        ["CONFIG", "GET", "dir"], ["CLIENT", "LIST"],
        ["SCRIPT", "FLUSH"], ["SORT", keys.QUEUE, "GET", "*"], ["PUBLISH", "c", "m"],
        ["MOVE", keys.QUEUE, "1"], ["RESTORE", "k", "0", "x"], ["SHUTDOWN", "NOSAVE"],
    ]  # fmt: skip
    for command in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            rds.execute_command(*command)
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)permission|can't run"):
        rds.eval("return redis.call('SWAPDB', 0, 1)", 0)
    assert rds.ping() and rds.llen(keys.QUEUE) >= 0
