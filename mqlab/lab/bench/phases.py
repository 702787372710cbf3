"""The bench's phases: POST /orders at a sustained rate, the drain of a full queue, the
dispatch to idle workers, the kata's burst; and the servers they run on."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from mqlab import db
from mqlab.figures.shot import Shot
from mqlab.figures.stats import summary
from mqlab.lab.bench.meters import CpuMeter
from mqlab.lab.completion import wait_completed_at
from mqlab.lab.environment import Servers
from mqlab.lab.loadgen import fire, pace
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys
from mqlab.protocol.scans import live_worker_ids_sync
from mqlab.settings import Settings
from mqlab.system.redis_clients import sync_client
from mqlab.system.resetting import reset_all
from mqlab.system.spec import WorkerSpec

T = TypeVar("T")

#: The kata's job time, for the phase of its 10 orders at one worker with 10 slots.
SLOT_JOB_SECONDS = 2.0
#: Seconds of load before each API phase (pool connections, prepared statements, caches).
WARMUP_SECONDS = 1.0
#: Clients that pre-fill the queue for the drain phases.
FILL_CLIENTS = 10
#: Dispatch phase: this many orders, one every DISPATCH_INTERVAL seconds.
DISPATCH_ORDERS = 300
DISPATCH_INTERVAL = 0.01
#: Burst phase: the kata's third row (ten orders at once to four idle workers), BURSTS times,
#: each after BURST_PAUSE seconds of quiet: what "the API answers at once" costs when the
#: orders arrive together on an idle lab, the slowest moment an answer has.
BURSTS, BURST_SIZE, BURST_WORKERS, BURST_PAUSE = 20, 10, 4, 0.3


class BenchError(RuntimeError):
    """A phase could not measure anything (e.g. the API refused every order)."""


def _first_failure(shots: list[Shot]) -> str:
    bad = next((s for s in shots if s.status != 202), None)
    if bad is None:
        return "no request was sent"
    return bad.error or f"HTTP {bad.status}"


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on uvloop: the load generator's own CPU cost is what it steals."""
    import uvloop

    async def main() -> T:
        return await factory()

    return uvloop.run(main())


@contextlib.contextmanager
def backends(named: Settings) -> Iterator[tuple[Settings, Path]]:
    """The servers named (both URLs), or embedded ones in a temporary folder of the bench's
    own, never the person's (the bench empties them); those are stopped on the way out."""
    base = Path(tempfile.mkdtemp(prefix="mqlab-bench-"))
    try:
        with Servers(named.redis_url, named.database_url, base=base) as settings:
            yield settings, base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def live_workers(settings: Settings) -> list[str]:
    client = sync_client(settings.redis_url, decode_responses=True)
    try:
        return live_worker_ids_sync(client)
    finally:
        client.close()


def wait_completed(settings: Settings, jobs: int, timeout: float) -> bool:
    """completion.wait_completed, from the bench's synchronous phases."""
    return run_async(lambda: wait_completed_at(settings.database_url, jobs, timeout))


def api_phase(
    settings: Settings, url: str, clients: int, seconds: float, meter: CpuMeter | None
) -> dict[str, Any]:
    """Sustained POST /orders at `clients` keep-alive connections, nothing consuming."""
    reset_all(settings)
    run_async(lambda: fire(url, 0, clients, duration=WARMUP_SECONDS))
    reset_all(settings)
    if meter is not None:
        meter.start()
    shots: list[Shot] = run_async(lambda: fire(url, 0, clients, duration=seconds))
    cpu = meter.stop() if meter is not None else {}
    ok = [s for s in shots if s.status == 202]
    if not ok:
        raise BenchError(f"the API accepted no order: {_first_failure(shots)}")
    span = max(s.sent_at + s.latency for s in shots) - min(s.sent_at for s in shots)
    ms = summary([s.latency for s in ok], scale=1000)
    return {
        "clients": clients,
        "requests": len(shots),
        "accepted": len(ok),
        "failed": len(shots) - len(ok),
        "rate": len(ok) / span if span > 0 else 0.0,
        "p50_ms": ms.get("p50"),
        "p99_ms": ms.get("p99"),
        "max_ms": ms.get("max", 0.0),
        "cpu_us_per_order": {k: v / max(1, len(ok)) * 1e6 for k, v in cpu.items()},
    }


def drain_phase(
    settings: Settings, sup: Supervisor, url: str, workers: int, jobs: int, spec: WorkerSpec
) -> dict[str, Any]:
    """Pre-filled queue of `jobs` jobs, then `workers` workers as `spec` says; jobs/s and the
    seconds from the first start to the last finish, from PostgreSQL."""
    reset_all(settings)
    shots = run_async(lambda: fire(url, jobs, FILL_CLIENTS, product="Drain"))
    accepted = sum(1 for s in shots if s.status == 202)
    if not accepted:
        raise BenchError(f"the API accepted none of {jobs} orders: {_first_failure(shots)}")
    client = sync_client(settings.redis_url)
    try:
        # Parked while the workers start, so their start-up is not part of the drain rate.
        client.rename(keys.QUEUE, keys.PARKED)
        children = sup.start_workers(workers, spec)
        try:
            client.rename(keys.PARKED, keys.QUEUE)  # wakes the blocked BLMOVEs
            done = wait_completed(settings, accepted, timeout=max(60.0, accepted / 20))
        finally:
            sup.stop_many([c.name for c in children])
    finally:
        client.close()
    with psycopg.connect(settings.database_url, autocommit=True, **db.connect_options()) as conn:
        count, span, redelivered = db.drain_figures(conn)
    return {
        "workers": workers,
        "batch": spec.batch,
        "concurrency": spec.concurrency,
        "jobs": accepted,
        "completed": count,
        "all_completed": done,
        "seconds": span,
        "rate": count / span if span > 0 else 0.0,
        "redelivered": redelivered,
    }


def dispatch_phase(settings: Settings, sup: Supervisor, url: str, workers: int) -> dict[str, Any]:
    """Idle workers waiting; orders one at a time; started_at - enqueued_at from PostgreSQL."""
    reset_all(settings)
    children = sup.start_workers(workers, WorkerSpec(job_seconds=0))
    try:
        shots = run_async(lambda: pace(url, DISPATCH_ORDERS, DISPATCH_INTERVAL, product="Ping"))
        accepted = sum(1 for s in shots if s.status == 202)
        done = wait_completed(settings, accepted, timeout=30)
    finally:
        sup.stop_many([c.name for c in children])
    with psycopg.connect(settings.database_url, autocommit=True, **db.connect_options()) as conn:
        times = db.dispatch_times(conn)
    dispatch = summary([start for start, _ in times], scale=1000)
    through = summary([finish for _, finish in times if finish is not None], scale=1000)
    api = summary([s.latency for s in shots if s.status == 202], scale=1000)
    return {
        "workers": workers,
        "orders": accepted,
        "all_completed": done,
        "p50_ms": dispatch.get("p50"),
        "p99_ms": dispatch.get("p99"),
        "max_ms": dispatch.get("max", 0.0),
        "enqueue_to_finish_p50_ms": through.get("p50"),
        "api_p50_ms": api.get("p50"),
        "api_p99_ms": api.get("p99"),
    }


def burst_phase(settings: Settings, sup: Supervisor, url: str) -> dict[str, Any]:
    """BURSTS bursts of BURST_SIZE orders at once, each after a pause; API latency of each."""
    reset_all(settings)
    children = sup.start_workers(BURST_WORKERS, WorkerSpec(job_seconds=0.05))
    shots: list[Shot] = []
    try:
        for n in range(1, BURSTS + 1):
            # The pause is the point: idle processes and a cold commit, as in the kata.
            time.sleep(BURST_PAUSE)
            shots += run_async(lambda: fire(url, BURST_SIZE, BURST_SIZE, product="Burst"))
            wait_completed(settings, n * BURST_SIZE, timeout=30)
    finally:
        sup.stop_many([c.name for c in children])
    ok = [s for s in shots if s.status == 202]
    if not ok:
        raise BenchError(f"the API accepted no order: {_first_failure(shots)}")
    ms = summary([s.latency for s in ok], scale=1000)
    return {
        "bursts": BURSTS,
        "orders": len(ok),
        "failed": len(shots) - len(ok),
        "p50_ms": ms.get("p50"),
        "p99_ms": ms.get("p99"),
        "max_ms": ms.get("max", 0.0),
    }
