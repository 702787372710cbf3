"""`mqlab bench` / `python -m mqlab.bench`: the producer's and the consumers' hot paths, measured.

Three measurements, each after a reset of every order, job and queue entry:

* POST /orders sustained rate and latency at 1 and at 10 keep-alive clients, no worker running
  (closed loop: each client sends its next order when the previous answer arrived);
* drain rate of 0-second jobs with 1 and with 4 workers: N jobs are accepted by the API with no
  worker running, moved aside while the workers start, and put back once all of them are
  idle, so the figure is the steady drain rate rather than interpreter start-up; jobs/s is
  N / (last job's finished_at - first job's started_at), from PostgreSQL;
* dispatch latency with 1 and 4 idle workers: orders sent one at a time at a modest rate;
  jobs.started_at - jobs.enqueued_at from PostgreSQL (enqueued_at is stamped inside the
  INSERT, so this spans commit, LPUSH, the BLMOVE wake-up and the claim).

Without REDIS_URL / DATABASE_URL (or --redis-url / --database-url) the embedded servers are
started in a temporary folder, owned by this process, and stopped at the end; the API and the
workers are children of a Supervisor. Nothing outlives the bench: not on an error, not on
Ctrl-C or SIGTERM (cleanup runs), not on SIGKILL (parent-death signal).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import psutil
import psycopg
import redis
from rich.console import Console
from rich.table import Table

from mqlab import keys, services
from mqlab.loadgen import Shot, fire, pace
from mqlab.resetting import reset_all
from mqlab.services.home import read_state
from mqlab.settings import Settings
from mqlab.supervisor import Supervisor

T = TypeVar("T")

#: The queue is parked here while the drain phase's workers start.
STAGING = "mqlab:bench:staging"
#: Seconds of load before each API phase (pool connections, prepared statements, caches).
WARMUP_SECONDS = 1.0
#: Clients that pre-fill the queue for the drain phases.
FILL_CLIENTS = 10
#: Dispatch phase: this many orders, one every DISPATCH_INTERVAL seconds.
DISPATCH_ORDERS = 300
DISPATCH_INTERVAL = 0.01


@dataclass(frozen=True)
class Target:
    """A figure's goal: at least (higher is better) or at most `value`."""

    value: float
    higher_is_better: bool
    strict: bool = False  # < or >, not <= or >=

    def met(self, figure: float | None) -> bool | None:
        if figure is None:
            return None
        if self.higher_is_better:
            return figure > self.value if self.strict else figure >= self.value
        return figure < self.value if self.strict else figure <= self.value

    def __str__(self) -> str:
        sign = ">" if self.higher_is_better else "<"
        return f"{sign}{'' if self.strict else '='} {self.value:g}"


TARGETS: dict[str, Target] = {
    "api_c1_rate": Target(728, True),
    "api_c1_p50_ms": Target(1.2, False),
    "api_c10_rate": Target(2108, True),
    "api_c10_p50_ms": Target(4.5, False),
    "drain_w1_rate": Target(376, True),
    "drain_w4_rate": Target(810, True),
    "dispatch_w1_p50_ms": Target(1.0, False, strict=True),
    "dispatch_w4_p50_ms": Target(1.0, False, strict=True),
}


@dataclass
class Figure:
    """One line of the table."""

    key: str
    label: str
    value: float | None
    unit: str
    note: str = ""

    @property
    def target(self) -> Target | None:
        return TARGETS.get(self.key)


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, label: str, value: float | None, unit: str, note: str = "") -> None:
        self.figures.append(Figure(key, label, value, unit, note))


# -- small helpers -------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A phase could not measure anything (e.g. the API refused every order)."""


def _first_failure(shots: list[Shot]) -> str:
    bad = next((s for s in shots if s.status != 202), None)
    if bad is None:
        return "no request was sent"
    return bad.error or f"HTTP {bad.status}"


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine on uvloop: the load generator's own CPU cost is what it steals."""
    import uvloop

    async def main() -> T:
        return await factory()

    return uvloop.run(main())


class CpuMeter:
    """CPU seconds spent by some processes between start() and stop(), per group."""

    def __init__(self, groups: dict[str, Callable[[], list[psutil.Process]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}

    @staticmethod
    def _times(procs: list[psutil.Process]) -> dict[int, float]:
        out: dict[int, float] = {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
        return out

    def start(self) -> None:
        self.before = {name: self._times(find()) for name, find in self.groups.items()}

    def stop(self) -> dict[str, float]:
        spent: dict[str, float] = {}
        for name, find in self.groups.items():
            now = self._times(find())
            spent[name] = sum(t - self.before[name].get(pid, 0.0) for pid, t in now.items())
        return spent


def _self_cpu() -> list[psutil.Process]:
    return [psutil.Process()]


def _tree(pid: int | None) -> Callable[[], list[psutil.Process]]:
    def find() -> list[psutil.Process]:
        if not pid:
            return []
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    return find


_ECHO = """
import socket, sys
sock = socket.socket(fileno=int(sys.argv[1]))
while data := sock.recv(64):
    sock.sendall(data)
"""


def round_trips(busy: int = 2000, idle: int = 100, gap: float = 0.005) -> dict[str, float]:
    """Median µs of a 1-byte ping-pong with another process: back to back, and after idling.

    The floor under every hop of the system (client -> API -> PostgreSQL / Redis -> worker):
    on a virtual machine a wake-up from idle can cost several times a busy one.
    """
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-c", _ECHO, str(theirs.fileno())], pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:

        def once() -> float:
            start = time.perf_counter()
            ours.sendall(b"x")
            ours.recv(64)
            return time.perf_counter() - start

        once()  # the child is up once it answers
        fast = [once() for _ in range(busy)]
        slow = []
        for _ in range(idle):
            time.sleep(gap)
            slow.append(once())
    finally:
        ours.close()
        child.wait(5)
    return {
        "busy_us": (percentile(fast, 0.5) or 0) * 1e6,
        "idle_us": (percentile(slow, 0.5) or 0) * 1e6,
    }


# -- the backends and the lab ----------------------------------------------------------------


@contextlib.contextmanager
def backends(redis_url: str | None, database_url: str | None) -> Iterator[tuple[Settings, Path]]:
    """The given servers, or embedded ones in a temporary folder, stopped on the way out."""
    if redis_url and database_url:
        yield Settings(redis_url, database_url), Path()
        return
    base = Path(tempfile.mkdtemp(prefix="mqlab-bench-"))
    try:
        infos = services.up(owned=True, base=base)
        urls = {info.name: info.url for info in infos}
        yield Settings(urls["redis"], urls["postgres"]), base
    finally:
        services.down(base=base)
        shutil.rmtree(base, ignore_errors=True)


def live_workers(settings: Settings) -> list[str]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        return list(client.scan_iter(match=f"{keys.WORKER_PREFIX}*"))
    finally:
        client.close()


def wait_completed(settings: Settings, n: int, timeout: float) -> bool:
    """Poll (on one connection: a new one per poll costs PostgreSQL a fork) until n are done."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.database_url, autocommit=True) as conn:

        def completed() -> int:
            row = conn.execute("SELECT count(*) FROM jobs WHERE status = 'completed'").fetchone()
            return int(row[0]) if row else 0

        while time.monotonic() < deadline:
            if completed() >= n:
                return True
            time.sleep(0.05)
        return completed() >= n


# -- the phases ------------------------------------------------------------------------------


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
    latencies = [s.latency for s in ok]
    return {
        "clients": clients,
        "requests": len(shots),
        "accepted": len(ok),
        "failed": len(shots) - len(ok),
        "rate": len(ok) / span if span > 0 else 0.0,
        "p50_ms": ms(percentile(latencies, 0.5)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(max(latencies, default=0.0)),
        "cpu_us_per_order": {k: v / max(1, len(ok)) * 1e6 for k, v in cpu.items()},
    }


def drain_phase(
    settings: Settings, sup: Supervisor, url: str, workers: int, jobs: int
) -> dict[str, Any]:
    """Pre-filled queue of 0-second jobs, then `workers` workers; jobs/s from PostgreSQL."""
    reset_all(settings)
    shots = run_async(lambda: fire(url, jobs, FILL_CLIENTS, product="Drain"))
    accepted = sum(1 for s in shots if s.status == 202)
    if not accepted:
        raise BenchError(f"the API accepted none of {jobs} orders: {_first_failure(shots)}")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        # Parked while the workers start, so their start-up is not part of the drain rate.
        client.rename(keys.QUEUE, STAGING)
        children = sup.start_workers(workers, job_seconds=0)
        try:
            client.rename(STAGING, keys.QUEUE)  # wakes the blocked BLMOVEs
            done = wait_completed(settings, accepted, timeout=max(60.0, accepted / 20))
        finally:
            sup.stop_many([c.name for c in children])
    finally:
        client.close()
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)),"
            " count(*) FILTER (WHERE attempts > 1) FROM jobs WHERE status = 'completed'"
        ).fetchone()
    assert row is not None
    count, span, redelivered = int(row[0]), float(row[1] or 0), int(row[2])
    return {
        "workers": workers,
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
    children = sup.start_workers(workers, job_seconds=0)
    try:
        shots = run_async(lambda: pace(url, DISPATCH_ORDERS, DISPATCH_INTERVAL, product="Ping"))
        accepted = sum(1 for s in shots if s.status == 202)
        done = wait_completed(settings, accepted, timeout=30)
    finally:
        sup.stop_many([c.name for c in children])
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at - enqueued_at),"
            " extract(epoch FROM finished_at - enqueued_at) FROM jobs WHERE started_at IS NOT NULL"
        ).fetchall()
    dispatch = [float(r[0]) for r in rows]
    through = [float(r[1]) for r in rows if r[1] is not None]
    api = [s.latency for s in shots if s.status == 202]
    return {
        "workers": workers,
        "orders": accepted,
        "all_completed": done,
        "p50_ms": ms(percentile(dispatch, 0.5)),
        "p99_ms": ms(percentile(dispatch, 0.99)),
        "max_ms": ms(max(dispatch, default=0.0)),
        "enqueue_to_finish_p50_ms": ms(percentile(through, 0.5)),
        "api_p50_ms": ms(percentile(api, 0.5)),
        "api_p99_ms": ms(percentile(api, 0.99)),
    }


# -- the whole bench -------------------------------------------------------------------------


def cpu_meter(sup: Supervisor, base: Path) -> CpuMeter:
    """Client, API, and (for embedded servers) PostgreSQL and Redis CPU."""
    groups: dict[str, Callable[[], list[psutil.Process]]] = {"client": _self_cpu}
    api = sup.children.get("api")
    groups["api"] = _tree(api.pid if api else None)
    if base != Path():
        state = read_state(base)
        groups["postgres"] = _tree(state.get("postgres", {}).get("pid"))
        groups["redis"] = _tree(state.get("redis", {}).get("pid"))
    return CpuMeter(groups)


def measure(settings: Settings, base: Path, seconds: float, jobs: int, say: Console) -> Results:
    results = Results()
    trips = round_trips()
    results.details["round_trip"] = trips
    results.add("rtt_busy", "Process round trip, busy", trips["busy_us"], "µs",
                "1-byte ping-pong over a socketpair: the floor under each hop")  # fmt: skip
    results.add("rtt_idle", "  after 5 ms idle", trips["idle_us"], "µs")
    with Supervisor(settings) as sup:
        sup.start_api()
        url = sup.api_url
        assert url is not None
        meter = cpu_meter(sup, base)
        for clients in (1, 10):
            say.print(f"[dim]POST /orders, {clients} client(s), {seconds:g} s ...[/]")
            r = api_phase(settings, url, clients, seconds, meter)
            results.details[f"api_c{clients}"] = r
            who = f"{clients} client{'s' if clients > 1 else ''}"
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in r["cpu_us_per_order"].items())
            note = f"{r['accepted']} accepted in {seconds:g} s"
            if r["failed"]:
                note += f", [red]{r['failed']} failed[/]"
            results.add(f"api_c{clients}_rate", f"POST /orders, {who}", r["rate"], "orders/s",
                        note)  # fmt: skip
            results.add(f"api_c{clients}_p50_ms", "  latency p50", r["p50_ms"], "ms")
            results.add(f"api_c{clients}_p99_ms", "  latency p99", r["p99_ms"], "ms")
            results.add(f"api_c{clients}_cpu", "  CPU per order (µs)", None, "", cpu)
        for workers in (1, 4):
            say.print(f"[dim]drain {jobs} jobs of 0 s with {workers} worker(s) ...[/]")
            r = drain_phase(settings, sup, url, workers, jobs)
            results.details[f"drain_w{workers}"] = r
            note = f"{r['completed']}/{r['jobs']} jobs in {r['seconds']:.2f} s"
            if r["redelivered"]:
                note += f", {r['redelivered']} redelivered"
            who = f"{workers} worker{'s' if workers > 1 else ''}"
            results.add(f"drain_w{workers}_rate", f"Drain 0 s jobs, {who}", r["rate"], "jobs/s",
                        note)  # fmt: skip
        for workers in (1, 4):
            say.print(f"[dim]dispatch, {DISPATCH_ORDERS} orders to {workers} idle worker(s) ...[/]")
            r = dispatch_phase(settings, sup, url, workers)
            results.details[f"dispatch_w{workers}"] = r
            who = f"{workers} idle worker{'s' if workers > 1 else ''}"
            note = (
                f"{r['orders']} orders, 1 per {DISPATCH_INTERVAL * 1000:g} ms; "
                f"API latency p50 {r['api_p50_ms'] or 0:.2f} ms"
            )
            results.add(f"dispatch_w{workers}_p50_ms", f"Dispatch, {who}, p50", r["p50_ms"],
                        "ms", note)  # fmt: skip
            results.add(f"dispatch_w{workers}_p99_ms", "  p99", r["p99_ms"], "ms")
        reset_all(settings)
    return results


def table(results: Results) -> Table:
    out = Table(title="mqlab bench: POST /orders, drain and dispatch", title_justify="left")
    out.add_column("Measure")
    out.add_column("Measured", justify="right")
    out.add_column("Target", justify="right")
    out.add_column("", justify="center")
    out.add_column("Notes", style="dim")
    for fig in results.figures:
        value = "" if fig.value is None else f"{fig.value:,.{0 if fig.value >= 100 else 2}f}"
        if fig.unit == "µs" and fig.value is not None:
            value = f"{fig.value:,.0f}"
        target = fig.target
        met = target.met(fig.value) if target else None
        verdict = {True: "[green]✓[/]", False: "[red]✗[/]", None: ""}[met]
        out.add_row(
            fig.label,
            f"{value} {fig.unit}".strip(),
            f"{target} {fig.unit}" if target else "",
            verdict,
            fig.note,
        )
    return out


def as_json(results: Results, seconds: float, jobs: int) -> dict[str, Any]:
    figures = {
        f.key: {
            "value": f.value,
            "unit": f.unit,
            "target": asdict(f.target) if f.target else None,
            "met": f.target.met(f.value) if f.target else None,
        }
        for f in results.figures
        if f.value is not None
    }
    return {
        "at": time.time(),
        "seconds": seconds,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "figures": figures,
        "details": results.details,
    }


def _sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so that every finally runs.
    raise KeyboardInterrupt


def run(
    *,
    seconds: float = 5.0,
    jobs: int = 3000,
    json_path: Path | None = None,
    redis_url: str | None = None,
    database_url: str | None = None,
    yes: bool = False,
    console: Console | None = None,
) -> int:
    """The whole bench; returns the exit code (0 whether or not targets are met)."""
    # Wide enough for the table when the output is a file or a pipe (rich assumes 80 then).
    say = console or Console(width=None if sys.stdout.isatty() else 130)
    redis_url = redis_url or os.environ.get("REDIS_URL") or None
    database_url = database_url or os.environ.get("DATABASE_URL") or None
    external = bool(redis_url and database_url)
    if bool(redis_url) != bool(database_url):
        say.print("[red]error:[/] give both Redis and PostgreSQL URLs, or neither (embedded)")
        return 2
    if external and not yes:
        say.print("[red]error:[/] the bench empties the given Redis and PostgreSQL: pass --yes")
        return 2
    previous = signal.signal(signal.SIGTERM, _sigterm)
    # Also when started with SIGINT ignored (a background job of a script): Ctrl-C and
    # `kill -INT` must unwind through the cleanup like everywhere else.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with backends(redis_url, database_url) as (settings, base):
            if external and (found := live_workers(settings)):
                say.print(f"[red]error:[/] workers are attached to that Redis ({len(found)}):"
                          " stop them first, they would take the bench's jobs")  # fmt: skip
                return 2
            say.print("[dim]backends: " + ("given" if external else f"embedded in {base}") + "[/]")
            results = measure(settings, base, seconds, jobs, say)
    except KeyboardInterrupt:
        say.print("[yellow]interrupted: everything the bench started is stopped[/]")
        return 130
    except BenchError as exc:
        say.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    say.print(table(results))
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(results, seconds, jobs), indent=2) + "\n")
        say.print(f"Figures written to {json_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqlab.bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per POST /orders phase")
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per drain phase")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--redis-url", default=None, help="Redis to use (default: embedded)")
    parser.add_argument("--database-url", default=None, help="PostgreSQL (default: embedded)")
    parser.add_argument("--yes", action="store_true", help="allow emptying given backends")
    args = parser.parse_args(argv)
    return run(
        seconds=args.seconds,
        jobs=args.jobs,
        json_path=args.json,
        redis_url=args.redis_url,
        database_url=args.database_url,
        yes=args.yes,
    )


if __name__ == "__main__":
    sys.exit(main())
