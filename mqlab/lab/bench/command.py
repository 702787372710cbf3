"""`mqlab bench`: run every phase on the given or embedded servers, print the table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console

from mqlab.lab.bench import phases
from mqlab.lab.bench.figures import Results, as_json, table
from mqlab.lab.bench.meters import cpu_meter, round_trips
from mqlab.lab.bench.phases import (
    BURST_PAUSE,
    BURST_SIZE,
    BURST_WORKERS,
    DISPATCH_INTERVAL,
    DISPATCH_ORDERS,
    BenchError,
    api_phase,
    backends,
    burst_phase,
    dispatch_phase,
    drain_phase,
    live_workers,
)
from mqlab.lab.environment import given
from mqlab.lab.interrupts import sigterm_as_ctrl_c
from mqlab.lab.supervisor import Supervisor
from mqlab.settings import Settings
from mqlab.system.resetting import reset_all
from mqlab.system.spec import DEFAULT_BATCH, WorkerSpec

#: The kata's burst, at one worker with this many slots (--concurrency).
SLOTS = 10


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
        # Alternated, batches on (the default) then one at a time, so that the machine's noise
        # falls on both alike.
        for workers in (1, 4):
            for batch, key in ((DEFAULT_BATCH, ""), (1, "_single")):
                how = f"batches of up to {batch}" if batch > 1 else "one at a time"
                say.print(f"[dim]drain {jobs} jobs of 0 s with {workers} worker(s), {how} ...[/]")
                spec = WorkerSpec(job_seconds=0, batch=batch)
                r = drain_phase(settings, sup, url, workers, jobs, spec)
                results.details[f"drain_w{workers}{key}"] = r
                note = f"{r['completed']}/{r['jobs']} jobs in {r['seconds']:.2f} s"
                if r["redelivered"]:
                    note += f", {r['redelivered']} redelivered"
                who = f"{workers} worker{'s' if workers > 1 else ''}"
                label = f"Drain 0 s jobs, {who}" if batch > 1 else "  one at a time (--batch 1)"
                results.add(f"drain_w{workers}{key}_rate", label, r["rate"], "jobs/s",
                            note)  # fmt: skip
        t = phases.SLOT_JOB_SECONDS
        say.print(f"[dim]the kata's {SLOTS} orders of {t:g} s, 1 worker with {SLOTS} slots ...[/]")
        spec = WorkerSpec(job_seconds=t, concurrency=SLOTS)
        r = drain_phase(settings, sup, url, 1, SLOTS, spec)
        results.details["slots"] = r
        note = f"{r['completed']}/{r['jobs']} jobs; one slot takes {SLOTS * t:g} s"
        results.add("slots_seconds", f"{SLOTS} orders of {t:g} s, 1 worker x {SLOTS} slots",
                    r["seconds"], "s", note)  # fmt: skip
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
        say.print(f"[dim]bursts of {BURST_SIZE} at once to {BURST_WORKERS} idle workers ...[/]")
        r = burst_phase(settings, sup, url)
        results.details["burst"] = r
        note = f"{r['orders']} orders, {r['bursts']} bursts, each after {BURST_PAUSE:g} s of quiet"
        if r["failed"]:
            note += f", [red]{r['failed']} failed[/]"
        results.add("burst_p50_ms", f"Burst of {BURST_SIZE} at once, p50", r["p50_ms"], "ms",
                    note)  # fmt: skip
        results.add("burst_max_ms", "  max", r["max_ms"], "ms")
        reset_all(settings)
    return results


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
    named = given(redis_url, database_url)
    external = not named.missing
    if len(named.missing) == 1:
        say.print("[red]error:[/] give both Redis and PostgreSQL URLs, or neither (embedded)")
        return 2
    if external and not yes:
        say.print("[red]error:[/] the bench empties the given Redis and PostgreSQL: pass --yes")
        return 2
    try:
        with sigterm_as_ctrl_c(), backends(named) as (settings, base):
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
    say.print(table(results))
    if json_path is not None:
        json_path.write_text(json.dumps(as_json(results, seconds, jobs), indent=2) + "\n")
        say.print(f"Figures written to {json_path}")
    return 0
