"""The report a person reads: markdown (+ SVG timelines) and JSON with every job's timestamps."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

import mqlab
from mqlab import timeline
from mqlab.results import RowResult, RunResult, SuiteResult
from mqlab.stats import PERCENTILES


@dataclass(frozen=True)
class Written:
    markdown: Path
    json: Path
    latest: Path


def machine(versions: dict[str, str]) -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": platform.node(),
        "os": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memoryGiB": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "mqlab": mqlab.__version__,
        **versions,
    }


def _s(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f} s"


def _ms(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1f} ms"


def overhead_breakdown(run: RunResult, job_seconds: float) -> dict[str, float]:
    """Where the makespan beyond k x T went, on the lane of the worker that finished last.

    The three parts add up to that lane's makespan minus its jobs' nominal time:
    to first start (request, commit, LPUSH, dispatch), job overrun (claim and completion
    statements, timer slack), and gaps between its jobs (ack, pop of the next one).
    """
    done = [j for j in run.jobs if j.started_at is not None and j.finished_at is not None]
    if not done:
        return {}
    last = max(done, key=lambda j: j.finished_at or 0.0)
    lane = sorted(
        (j for j in done if j.worker_id == last.worker_id), key=lambda j: j.started_at or 0
    )
    first_start = (lane[0].started_at or 0) - run.first_sent
    overrun = sum((j.finished_at or 0) - (j.started_at or 0) - job_seconds for j in lane)
    gaps = sum((b.started_at or 0) - (a.finished_at or 0) for a, b in itertools.pairwise(lane))
    return {
        "jobsOnLane": len(lane),
        "toFirstStart": first_start,
        "jobOverrun": overrun,
        "gapsBetweenJobs": gaps,
    }


def _kata_table(result: SuiteResult) -> list[str]:
    lines = [
        "| Experiment | Expected | Ideal | Measured (median) | min - max | Overhead | Verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        ideal = r.row.ideal_seconds
        pct = f" ({100 * r.overhead / ideal:+.1f}%)" if ideal else ""
        expected = "-" if r.row.expected_seconds is None else f"{r.row.expected_seconds:g} s"
        lines.append(
            f"| {r.row.name} | {expected} | {ideal:g} s | **{_s(r.makespan)}** | "
            f"{_s(min(r.makespans))} - {_s(max(r.makespans))} | "
            f"{r.overhead * 1000:+.0f} ms{pct} | {r.verdict} |"
        )
    api = result.api
    if api is not None:
        total = sum(api.statuses.values())
        statuses = ", ".join(f"{n} x {code}" for code, n in sorted(api.statuses.items()))
        lines.append(
            f"| API responds | Immediately (202 Accepted) | - | {statuses} of {total}; "
            f"p50 {_ms(api.latency_ms.get('p50'))}, max {_ms(api.latency_ms.get('max'))} | "
            f"| | {api.verdict} |"
        )
    return lines


def _latency_table(rows: list[RowResult], title: str, pick: str) -> list[str]:
    cols = [f"p{p}" for p in PERCENTILES] + ["max"]
    lines = [f"| {title} | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        data = r.api_latency_ms() if pick == "api" else r.queue_wait_ms()
        n = sum(len(run.shots if pick == "api" else run.jobs) for run in r.runs)
        lines.append(f"| {r.row.name} | {n} | " + " | ".join(_ms(data.get(c)) for c in cols) + " |")
    return lines


def render_markdown(result: SuiteResult, svg_names: list[str], info: dict[str, Any]) -> str:
    suite = result.suite
    when = dt.datetime.fromtimestamp(result.started_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "PASS" if result.passed else "FAIL"
    job_times = sorted({f"{r.row.job_seconds:g} s ({r.row.work})" for r in result.rows})
    out = [
        f"# {suite.title}: {when}",
        "",
        f"Suite `{suite.name}`"
        + (f" ({suite.path})" if suite.path else "")
        + f", job time {', '.join(job_times)}, each row run {result.repeat} time(s); the median "
        "is shown. Makespan = first request sent -> last job finished, from PostgreSQL's "
        "timestamps. Workers are started and ready before the first order is sent.",
        "",
        f"**Verdict: {verdict}**",
        "",
    ]
    out += [f"- {f}" for f in result.failures()]
    out += ["", "## The kata's table", "", *_kata_table(result), ""]
    out += ["## Scaling", "", "| Row | Workers | Makespan | Speedup | Efficiency | Against |"]
    out += ["|---|---|---|---|---|---|"]
    for r in result.rows:
        out.append(
            f"| {r.row.name} | {r.row.workers} | {_s(r.makespan)} | {r.speedup:.2f}x | "
            f"{100 * r.efficiency:.0f}% | {r.speedup_baseline} |"
        )
    out += ["", "## API latency (POST /orders, every request of every run)", ""]
    out += _latency_table(result.rows, "Row", "api")
    out += ["", "## Queue wait (enqueued -> started)", ""]
    out += _latency_table(result.rows, "Row", "queue")
    out += ["", "## Where the overhead goes", ""]
    out += [
        "On the lane of the worker that finished last, in the median run: the time from the",
        "first request to that worker's first start (HTTP, the order's commit, LPUSH, BLMOVE",
        "wake-up, the claim), what its jobs ran over T (claim and completion statements,",
        "timer slack), and the gaps between its jobs (ack, next pop). Startup of the workers",
        "is not in the makespan; it is shown here.",
        "",
        "| Row | Jobs on lane | To first start | Job overrun | Gaps | Worker startup |",
        "|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        b = overhead_breakdown(r.representative, r.row.job_seconds)
        out.append(
            f"| {r.row.name} | {b.get('jobsOnLane', 0):.0f} | "
            f"{_ms(1000 * b.get('toFirstStart', math.nan))} | "
            f"{_ms(1000 * b.get('jobOverrun', math.nan))} | "
            f"{_ms(1000 * b.get('gapsBetweenJobs', math.nan))} | {_s(r.startup_seconds(), 2)} |"
        )
    out += ["", "## Timelines (median run of each row)", ""]
    for r, name in zip(result.rows, svg_names, strict=True):
        per_worker = ", ".join(f"{w}: {n}" for w, n in r.representative.per_worker().items())
        out += [
            f"### {r.row.name}",
            "",
            f"![timeline of {r.row.name}]({name})",
            "",
            f"Jobs per worker: {per_worker}",
            "",
            "```text",
            timeline.text(r.representative),
            "```",
            "",
        ]
    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(out) + "\n"


def to_json(result: SuiteResult, info: dict[str, Any], command: str) -> dict[str, Any]:
    api = result.api
    return {
        "suite": result.suite.name,
        "title": result.suite.title,
        "file": str(result.suite.path) if result.suite.path else None,
        "command": command,
        "repeat": result.repeat,
        "startedAt": result.started_at,
        "finishedAt": result.finished_at,
        "passed": result.passed,
        "failures": result.failures(),
        "api": None
        if api is None
        else {
            "statuses": api.statuses,
            "latencyMs": api.latency_ms,
            "verdict": api.verdict,
            "reason": api.reason,
        },
        "machine": info,
        "rows": [r.to_json() for r in result.rows],
    }


def write(result: SuiteResult, out_dir: Path, versions: dict[str, str], command: str) -> Written:
    """Write <timestamp>-<suite>.md/.json, one SVG per row, and latest.md / latest.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.fromtimestamp(result.started_at, dt.UTC).strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{result.suite.name}"
    info = machine(versions)
    svg_names = []
    for i, r in enumerate(result.rows, 1):
        name = f"{base}-row{i}.svg"
        (out_dir / name).write_text(timeline.svg(r.representative, r.row.name))
        svg_names.append(name)
    md = out_dir / f"{base}.md"
    md.write_text(render_markdown(result, svg_names, info))
    js = out_dir / f"{base}.json"
    js.write_bytes(orjson.dumps(to_json(result, info, command), option=orjson.OPT_INDENT_2))
    latest = out_dir / "latest.md"
    shutil.copyfile(md, latest)
    shutil.copyfile(js, out_dir / "latest.json")
    return Written(markdown=md, json=js, latest=latest)
