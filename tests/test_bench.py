"""`mqlab bench`, short and real: every phase measures something and nothing is left running."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import psutil
import pytest
import redis
from rich.console import Console

from mqlab.bench import phases, run
from mqlab.protocol import keys
from mqlab.protocol.scans import live_worker_ids_sync
from mqlab.settings import Settings


def _mqlab_children() -> set[int]:
    """Our API and worker processes (the session's servers are our children too)."""
    found = set()
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "-m mqlab" in " ".join(proc.cmdline()):
                found.add(proc.pid)
    return found


def test_a_short_bench_measures_every_figure(
    settings: Settings, rds: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow by design (about 15 s): every phase of the bench runs for real, shortened, with an
    API and workers of its own: API rates at 1 and 10 connections, drains with 1 and 4
    workers, dispatch, bursts."""
    monkeypatch.setattr(phases, "DISPATCH_ORDERS", 20)
    monkeypatch.setattr(phases, "BURSTS", 3)
    monkeypatch.setattr(phases, "WARMUP_SECONDS", 0.2)
    # Heartbeats of workers that earlier tests stopped live on for their TTL, and the bench
    # rightly refuses to run beside live workers.
    for wid in live_worker_ids_sync(rds):
        rds.delete(keys.worker_key(wid))
    out = tmp_path / "bench.json"
    before = _mqlab_children()
    with (tmp_path / "bench.txt").open("w") as printed:
        code = run(
            seconds=0.5,
            jobs=40,
            json_path=out,
            redis_url=settings.redis_url,
            database_url=settings.database_url,
            yes=True,
            console=Console(file=printed, width=140),
        )

    assert code == 0, (tmp_path / "bench.txt").read_text()
    figures = json.loads(out.read_text())["figures"]
    details = json.loads(out.read_text())["details"]
    for key in ("api_c1_rate", "api_c10_rate", "drain_w1_rate", "drain_w4_rate"):
        assert figures[key]["value"] > 0, key
    for key in ("api_c1_p50_ms", "api_c10_p50_ms", "dispatch_w1_p50_ms", "dispatch_w4_p50_ms",
                "burst_p50_ms", "burst_max_ms"):  # fmt: skip
        assert 0 < figures[key]["value"] < 5000, key
    for phase in ("drain_w1", "drain_w4"):
        assert details[phase]["completed"] == details[phase]["jobs"] == 40
    for phase in ("dispatch_w1", "dispatch_w4"):
        assert details[phase]["orders"] == 20 and details[phase]["all_completed"]
    assert details["burst"]["orders"] == 30 and details["burst"]["failed"] == 0
    # The API and the workers it started are gone (other tests' API may still be running).
    assert _mqlab_children() <= before


def test_the_bench_refuses_given_servers_without_yes(settings: Settings, tmp_path: Path) -> None:
    with (tmp_path / "out.txt").open("w") as printed:
        code = run(
            redis_url=settings.redis_url,
            database_url=settings.database_url,
            console=Console(file=printed, width=140),
        )
    assert code == 2
    assert "--yes" in (tmp_path / "out.txt").read_text()
