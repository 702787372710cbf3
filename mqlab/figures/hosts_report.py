"""The report's sections for a suite on several hosts: each host's throughput, what a
network round trip adds (the rows that differ only by their links' delay), and the
disruptions (a partition, a failover) with their timings."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from mqlab.experiments import Row
from mqlab.figures.results import RowResult, SuiteResult
from mqlab.figures.results_table import ms, seconds
from mqlab.protocol.ids import host_by_prefix


def _completed_by_host(r: RowResult, hosts: list[str]) -> Counter[str]:
    """Jobs completed in the row's median run, by the host its worker (`<host>-w<n>`) ran on."""
    run = r.representative
    return Counter(
        host_by_prefix(j.worker_id or "", hosts) or "?" for j in run.jobs if j.status == "completed"
    )


def throughput_markdown(result: SuiteResult) -> list[str]:
    """Jobs each host's workers completed in each row's median run, and at what rate (over
    the row's makespan)."""
    assert result.suite.hosts is not None
    hosts = list(result.suite.hosts.workers)
    head = "| Row | " + " | ".join(hosts) + " |"
    out = ["## Each host's throughput", "", head, "|---|" + "---|" * len(hosts)]
    for r in result.rows:
        if r.makespan <= 0:
            continue
        done = _completed_by_host(r, hosts)
        cells = [f"{done[h]} ({done[h] / r.makespan:,.1f}/s)" if done[h] else "-" for h in hosts]
        out.append(f"| {r.row.name} | " + " | ".join(cells) + " |")
    return [
        *out,
        "",
        "Jobs completed by the workers of each host in the row's median run (jobs a second "
        "over the row's makespan). A row's workers are placed on the host with the fewest.",
        "",
    ]


def _base(row: Row) -> Row:
    """The row as it would be with no delay on its links (what the delay is compared with;
    a drain's size aside: its rate is per job)."""
    orders = 0 if row.prefill else row.orders
    return replace(row, name="", orders=orders, link_delay_ms=0.0, link_jitter_ms=0.0,
                   expected_seconds=None, tolerance_seconds=None)  # fmt: skip


def latency_markdown(result: SuiteResult) -> list[str]:
    """Rows that differ only by their links' delay, side by side: the makespan, the API's
    answer, the queue wait (dispatch), the rate a worker keeps, and from it the round trips a
    job costs: (ms per job per worker - that at 0 ms) / the round trip added."""
    groups: dict[Row, list[RowResult]] = {}
    for r in result.rows:
        groups.setdefault(_base(r.row), []).append(r)
    groups = {k: v for k, v in groups.items() if len(v) > 1 and any(x.row.link_delay_ms for x in v)}
    if not groups:
        return []
    out = [
        "## What a network round trip adds",
        "",
        "| Row | Added each way | Round trip | Makespan | API p50 | API max | Queue wait p50 "
        "| Jobs/s | ms a job, per worker | Round trips a job |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows in groups.values():
        zero = next((x for x in rows if not x.row.link_delay_ms), None)
        for r in sorted(rows, key=lambda x: x.row.link_delay_ms):
            out.append(_latency_line(r, zero))
    return [
        *out,
        "",
        "Every worker and API host's link adds the delay to each direction of each of its "
        "connections to Valkey and to PostgreSQL; the lab fires at the APIs directly. Round "
        "trip: a SELECT 1 from a worker host through its link, measured before the row (the "
        "median of 30; a link's timers fire up to a millisecond late, so it is more than twice "
        "the delay). ms a job, per worker = workers x makespan / jobs. Round trips a job = its "
        "growth over the row at +0 ms, divided by the round trip's: how many times a job "
        "waits on a server, in sequence.",
        "",
    ]


def _completed(r: RowResult) -> int:
    """Jobs completed in the row's median run."""
    return sum(1 for j in r.representative.jobs if j.status == "completed")


def _per_job_ms(r: RowResult) -> float:
    """ms a job takes a worker: workers x makespan / jobs completed (median run)."""
    done = _completed(r)
    return 1000 * r.row.workers * r.makespan / done if done else float("nan")


def _latency_line(r: RowResult, zero: RowResult | None) -> str:
    rate = _completed(r) / r.makespan if r.makespan > 0 else 0.0
    per_job, rtt = _per_job_ms(r), r.representative.link_rtt_ms
    trips = "-"
    if zero is not None and r.row.link_delay_ms and r.row.spec.job_seconds == 0:
        # The round trip the links really added (measured), else the nominal twice the delay.
        zero_rtt = zero.representative.link_rtt_ms
        added = rtt - zero_rtt if rtt and zero_rtt else 2 * r.row.link_delay_ms
        trips = f"{(per_job - _per_job_ms(zero)) / added:.1f}"
    api, wait = r.api_latency_ms(), r.queue_wait_ms()
    return (
        f"| {r.row.name} | {r.row.link_delay_ms:g} ms | {ms(rtt)} | {seconds(r.makespan)} | "
        f"{ms(api.get('p50'))} | {ms(api.get('max'))} | {ms(wait.get('p50'))} | "
        f"{rate:,.0f} | {per_job:.1f} | {trips} |"
    )


def disruptions_markdown(result: SuiteResult) -> list[str]:
    """A partition's and a failover's timings and what the guarded claim refused."""
    out = []
    for r in result.rows:
        x = r.ledger
        if x is None or not (x.timings or x.recovery_kind in ("cut -> taken over",)):
            continue
        figures = [f"{k}: {v:.2f} s" for k, v in x.timings.items()]
        if x.recovery and x.recovery_kind == "cut -> taken over":  # a failover's: in timings
            figures.append(
                f"{x.recovery_kind}: p50 {x.recovery_p50:.2f} s, max {x.recovery_max:.2f} s "
                f"({len(x.recovery)} job(s))"
            )
        figures.append(f"late completions refused by the guarded claim: {x.refused_late}")
        figures.append(f"jobs the reconciler queued again (their messages lost): {x.reconciled}")
        figures.append(f"work run twice: {x.work_twice}; completed twice: {x.completed_twice}")
        out += [f"### {r.row.name}", "", *(f"- {f}" for f in figures), ""]
    return ["## Disruptions", "", *out] if out else []


def hosts_markdown(result: SuiteResult) -> list[str]:
    """Every section of a suite on several hosts (none for another suite)."""
    if result.suite.hosts is None:
        return []
    return [
        *throughput_markdown(result),
        *latency_markdown(result),
        *disruptions_markdown(result),
    ]
