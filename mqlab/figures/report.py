"""The report a person reads: markdown (+ SVG timelines) and JSON with every job's timestamps."""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psutil

import mqlab
from mqlab.figures import speedup_chart, timeline
from mqlab.figures.hosts_report import hosts_markdown
from mqlab.figures.results import RowResult, SuiteResult
from mqlab.figures.results_table import ledger_table, ms, seconds, table
from mqlab.figures.stats import PERCENTILES, json_number, label, most_speedup, samples_for


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


def kata_table(result: SuiteResult) -> list[str]:
    """The kata's table in markdown: the median in bold, the runs' spread, the overhead with
    its share of the ideal time."""
    lines = [
        "| Experiment | Expected | Ideal | Measured | min - max | Overhead | Verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in table(result):
        overhead = f"{t.overhead} ({t.share})" if t.share else t.overhead
        lines.append(
            f"| {t.name} | {t.expected} | {t.ideal} | **{t.measured}** | {t.spread} | "
            f"{overhead} | {t.verdict_text} |"
        )
    return lines


def ledger_markdown(result: SuiteResult) -> list[str]:
    """Kata 4's ledger, and each row's retries and recovery (nothing for kata3's rows)."""
    cells = ledger_table(result)
    if not cells:
        return []
    out = [
        "## The ledger",
        "",
        "accepted (202) = completed + dead + lost. Work run twice: jobs with an attempt that",
        "crashed, was reclaimed or handed back before another one (work is at least once).",
        "Completed twice: job_finished events of more than one attempt or worker for a job (the "
        "same attempt announced twice, its reply lost, is one completion). Recovery: p50 / max.",
        "",
        "| Row | Accepted | Refused (503) | Completed | Dead | Lost | Work twice / completed "
        "twice | Recovery | Verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        out.append(
            f"| {c.name} | {c.accepted} | {c.refused} | {c.completed} | {c.dead} | "
            f"**{c.lost}** | {c.twice} | {c.recovery} | {c.verdict_text} |"
        )
    out.append("")
    for r in result.rows:
        x = r.ledger
        if x is None or x.skipped:
            continue
        lines = [f"- workers killed (SIGKILL) and replaced: {x.kills}"] if x.kills else []
        if x.recovery_kind:
            lines.append(
                f"- recovery ({x.recovery_kind}): {len(x.recovery)} measured, p50 "
                f"{seconds(x.recovery_p50)}, max {seconds(x.recovery_max)}"
            )
        hist = ", ".join(f"{n} attempt(s): {k}" for n, k in x.attempts_histogram.items())
        lines.append(f"- jobs by attempts: {hist or '-'}")
        if x.delays_checked:
            lines.append(
                f"- backoff: {x.backoff_seconds:.2f} s added in all; {x.delays_in_policy} of "
                f"{x.delays_checked} delays within the policy's [c/2, c]"
            )
        if x.crashed_workers:
            lines.append(f"- workers that crashed (restarted when asked): {x.crashed_workers}")
        if x.replay is not None:
            lines.append(
                f"- replay without the poison pattern: {x.replay.dead_before} dead, "
                f"{x.replay.replayed} replayed, {x.replay.completed_after} completed after"
            )
        out += [f"### {r.row.name}: {r.verdict}", "", r.reason, "", *lines, ""]
    return out


def _latency_table(rows: list[RowResult], title: str, pick: str) -> list[str]:
    """n, min, the PERCENTILES and max; a percentile of fewer values than it needs
    (stats.samples_for) is '-': min and max say all there is."""
    cols = ["min", *(label(p) for p in PERCENTILES), "max"]
    lines = [f"| {title} | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        data = r.api_latency_ms() if pick == "api" else r.queue_wait_ms()
        n = sum(len(run.shots if pick == "api" else run.jobs) for run in r.runs)
        for p in PERCENTILES:
            if n < samples_for(p):
                data.pop(label(p), None)
        lines.append(f"| {r.row.name} | {n} | " + " | ".join(ms(data.get(c)) for c in cols) + " |")
    needs = ", ".join(f"{label(p)} {samples_for(p)}" for p in PERCENTILES)
    return [*lines, "", f"A percentile is shown from the number of values it needs ({needs})."]


def scaling_markdown(result: SuiteResult, chart: str | None = None) -> list[str]:
    """Each timed row's speedup against what it is measured against, and the most it could
    be (Kata 4's rows are judged by their ledgers, not timed: not here)."""
    rows = [r for r in result.rows if not r.row.faulty]
    if not rows:
        return []
    out = [
        "## Scaling",
        "",
        "| Row | Workers | Makespan | Speedup | Most possible | Of the most | Per worker "
        "| Against |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        row = r.row
        if row.workers == row.spec.concurrency == 1:
            out.append(f"| {row.name} | 1 | {seconds(r.makespan)} | - | - | - | - | "
                       "(one worker: a baseline) |")  # fmt: skip
            continue
        most = most_speedup(row.orders, row.slots)
        rounds = math.ceil(row.orders / row.slots)
        slots = row.spec.concurrency
        workers = f"{row.workers} x {slots} slots" if slots > 1 else f"{row.workers}"
        out.append(
            f"| {row.name} | {workers} | {seconds(r.makespan)} | {r.speedup:.2f}x | "
            f"{most:.2f}x ({row.orders} jobs in {rounds} rounds) | {100 * r.speedup / most:.0f}% "
            f"| {100 * r.efficiency:.0f}% | {r.speedup_baseline} |"
        )
    return [
        *out,
        "",
        "Speedup: the makespan it is measured against (Against) divided by the row's. Most "
        "possible: N jobs of one length on W workers take ceil(N/W) rounds where one worker "
        "takes N, so N / ceil(N/W) at most. Of the most: the speedup's share of that bound. "
        "Per worker: speedup / W (the classic efficiency; below 100 % whenever N is not a "
        "multiple of W). A worker with slots (--concurrency) counts as that many workers "
        "when its jobs sleep, and as one when they spin the CPU.",
        "",
        *_speedup_chart(result, chart),
    ]


def drain_markdown(result: SuiteResult) -> list[str]:
    """The drain rows' rates: jobs completed a second, from the moment the workers got the
    queue (prefill) to the last job (the median run)."""
    rows = [r for r in result.rows if r.row.prefill and r.makespan > 0]
    if not rows:
        return []
    out = ["## Drains", "", "| Row | Workers | Jobs | Time | Jobs/s |", "|---|---|---|---|---|"]
    for r in rows:
        done = sum(1 for j in r.representative.jobs if j.status == "completed")
        out.append(f"| {r.row.name} | {r.row.workers} | {done} | {seconds(r.makespan)} | "
                   f"{done / r.makespan:,.0f} |")  # fmt: skip
    return [*out, "", "Time: from when the workers got the full queue to its last job.", ""]


def _speedup_chart(result: SuiteResult, chart: str | None) -> list[str]:
    """The speedup against workers of each kind of work the suite scales: the picture (when
    written) and its figures as text."""
    figures = speedup_chart.text(result)
    if not figures:
        return []
    picture = [f"![speedup against workers]({chart})", ""] if chart else []
    return ["### Speedup against workers", "", *picture, "```text", *figures, "```", ""]


def render_markdown(
    result: SuiteResult, svg_names: list[str], info: dict[str, Any], chart: str | None = None
) -> str:
    suite = result.suite
    when = dt.datetime.fromtimestamp(result.started_at, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    verdict = "PASS" if result.passed else "FAIL"
    job_times = sorted({f"{r.row.spec.job_seconds:g} s ({r.row.spec.work})" for r in result.rows})
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
    out += ["", "## The kata's table", "", *kata_table(result), ""]
    out += ledger_markdown(result)
    out += scaling_markdown(result, chart)
    out += drain_markdown(result)
    out += hosts_markdown(result)
    out += ["## API latency (POST /orders, every request of every run)", ""]
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
        b = r.breakdown()
        parts = ["0", "-", "-", "-"] if b is None else [
            str(b.jobs), ms(1000 * b.to_first_start), ms(1000 * b.job_overrun), ms(1000 * b.gaps)
        ]  # fmt: skip
        out.append(f"| {r.row.name} | {' | '.join(parts)} | {seconds(r.startup_seconds())} |")
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
            *_attempts_line(r.representative.attempts),
            "```text",
            timeline.text(r.representative),
            "```",
            "",
        ]
    out += ["## Machine", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in info.items()]
    return "\n".join(out) + "\n"


def _attempts_line(attempts: dict[str, int]) -> list[str]:
    """ "Attempts: 12 (10 completed, 2 failed)" when any attempt did not simply complete."""
    if set(attempts) <= {"completed"}:
        return []
    said = ", ".join(f"{n} {outcome.replace('_', ' ')}" for outcome, n in attempts.items())
    return [f"Attempts: {sum(attempts.values())} ({said})", ""]


def row_json(r: RowResult) -> dict[str, Any]:
    """A row's figures, runs, jobs and requests, as the JSON report holds them."""
    row = r.row
    ideal = row.ideal_seconds
    return {
        "name": row.name,
        "orders": row.orders,
        "workers": row.workers,
        "jobSeconds": row.spec.job_seconds,
        "work": row.spec.work,
        "expectedSeconds": row.expected_seconds,
        "toleranceSeconds": row.tolerance if row.expected_seconds is not None else None,
        "idealSeconds": ideal,
        "makespanSeconds": json_number(r.makespan),
        "runs": [
            {
                "makespanSeconds": json_number(run.makespan),
                "firstSentAt": run.first_sent,
                "lastFinishedAt": json_number(run.last_finished),
                "startupSeconds": run.startup_seconds,
                "timedOut": run.timed_out,
                "perWorker": run.per_worker(),
                "attempts": run.attempts,
                "apiStatuses": dict(Counter(str(s.status) for s in run.shots)),
                "linkRoundTripMs": run.link_rtt_ms,
            }
            for run in r.runs
        ],
        "makespanMinSeconds": json_number(min(r.makespans)),
        "makespanMaxSeconds": json_number(max(r.makespans)),
        "overheadSeconds": json_number(r.overhead),
        "overheadPercent": json_number(100 * r.overhead / ideal) if ideal else None,
        "speedup": json_number(r.speedup),
        "efficiency": json_number(r.efficiency),
        "speedupBaseline": r.speedup_baseline,
        "mostSpeedup": json_number(most_speedup(row.orders, row.slots)),
        "apiLatencyMs": r.api_latency_ms(),
        "queueWaitMs": r.queue_wait_ms(),
        "perWorker": r.representative.per_worker(),
        "startupSeconds": json_number(r.startup_seconds()),
        "verdict": r.verdict,
        "reason": r.reason,
        "ledger": None if r.ledger is None else r.ledger.to_json(),
        "ledgers": [run.ledger.to_json() for run in r.runs if run.ledger is not None],
        "jobs": [
            {"run": i, **job.to_json()} for i, run in enumerate(r.runs, 1) for job in run.jobs
        ],
        "requests": [
            {
                "run": i,
                "status": s.status,
                "sentAt": s.sent_at,
                "latencyMs": s.latency * 1000,
                "orderId": s.order_id,
                "error": s.error,
            }
            for i, run in enumerate(r.runs, 1)
            for s in run.shots
        ],
    }


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
        "rows": [row_json(r) for r in result.rows],
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
    chart = speedup_chart.svg(result)
    chart_name = f"{base}-speedup.svg" if chart else None
    if chart and chart_name:
        (out_dir / chart_name).write_text(chart)
    md = out_dir / f"{base}.md"
    md.write_text(render_markdown(result, svg_names, info, chart_name))
    js = out_dir / f"{base}.json"
    js.write_bytes(orjson.dumps(to_json(result, info, command), option=orjson.OPT_INDENT_2))
    latest = out_dir / "latest.md"
    shutil.copyfile(md, latest)
    shutil.copyfile(js, out_dir / "latest.json")
    return Written(markdown=md, json=js, latest=latest)
