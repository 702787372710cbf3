"""What a run measured, and every figure derived from it (verdicts included)."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mqlab.experiments import Row, Suite
from mqlab.figures.ledger import Attempt, Ledger
from mqlab.figures.shot import Shot
from mqlab.figures.stats import HEADLINE, efficiency, label, median, speedup, summary


class Verdict(StrEnum):
    """A row's or the API's verdict, as the report, the JSON, the CLI and the TUI show it."""

    OK = "ok"
    MEASURED = "measured"  # a row with no expected time: measured, not judged
    SLOW = "slow"
    FAIL = "fail"
    SKIPPED = "skipped"  # a row these servers cannot run (said why): not a failure

    @property
    def style(self) -> str:
        """The one colour of this verdict (a rich style, which Textual takes too)."""
        return _STYLES[self]

    @property
    def passes(self) -> bool:
        """Whether a row with this verdict lets the run pass (exit status 0)."""
        return self in (Verdict.OK, Verdict.MEASURED, Verdict.SKIPPED)


_STYLES = {
    Verdict.OK: "bold green",
    Verdict.MEASURED: "cyan",
    Verdict.SLOW: "bold yellow",
    Verdict.FAIL: "bold red",
    Verdict.SKIPPED: "dim",
}


@dataclass(frozen=True)
class JobTiming:
    """One job's life, as PostgreSQL recorded it (epoch seconds)."""

    job_id: str
    order_id: int
    worker_id: str | None
    attempts: int
    enqueued_at: float
    started_at: float | None
    finished_at: float | None
    status: str

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> JobTiming:
        return cls(*row)

    @property
    def queue_wait(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.enqueued_at

    def to_json(self) -> dict[str, Any]:
        return {
            "jobId": self.job_id,
            "orderId": self.order_id,
            "workerId": self.worker_id,
            "attempts": self.attempts,
            "status": self.status,
            "enqueuedAt": self.enqueued_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }


@dataclass
class RunResult:
    """One run of one row."""

    shots: list[Shot]
    jobs: list[JobTiming]
    first_sent: float
    startup_seconds: float
    timed_out: bool
    worker_ids: list[str]
    #: Every attempt of the run's jobs, in the order they started (the timelines draw them).
    history: list[Attempt] = field(default_factory=list)
    #: Workers the run killed on purpose: (epoch seconds, worker id).
    kills: list[tuple[float, str]] = field(default_factory=list)
    #: A Kata 4 row's ledger (None for a row judged by its time, as kata3's).
    ledger: Ledger | None = None
    #: On lab hosts: a round trip to PostgreSQL through a worker host's link, measured just
    #: before the row (ms, the median of a few): what the row's links add, as it really is.
    link_rtt_ms: float | None = None

    @property
    def attempts(self) -> dict[str, int]:
        """How its attempts ended (outcome -> count, by outcome), from its history: retries,
        crashes and dead ends beside the completions."""
        ended = Counter(a.outcome for a in self.history if a.outcome != "running")
        return dict(sorted(ended.items()))

    @property
    def last_finished(self) -> float:
        return max((j.finished_at for j in self.jobs if j.finished_at), default=math.nan)

    @property
    def makespan(self) -> float:
        """First request sent -> last job finished."""
        return self.last_finished - self.first_sent

    def problems(self, orders: int) -> list[str]:
        out = []
        refused = Counter(s.status for s in self.shots if s.status != 202)
        if refused:
            out.append(f"not every order got 202: {dict(refused)}")
        completed = sum(1 for j in self.jobs if j.status == "completed")
        if completed != orders:
            dead = sum(1 for j in self.jobs if j.status == "dead")
            out.append(
                f"{completed} of {orders} jobs completed" + (f", {dead} dead" if dead else "")
            )
        if self.timed_out:
            out.append("timed out waiting for the last job")
        return out

    def per_worker(self) -> dict[str, int]:
        counts = dict.fromkeys(self.worker_ids, 0)
        for job in self.jobs:
            if job.worker_id and job.status == "completed":
                counts[job.worker_id] = counts.get(job.worker_id, 0) + 1
        return counts

    def breakdown(self, job_seconds: float) -> Overhead | None:
        """Where the time beyond k x T went on the lane of the worker that finished last
        (None when no job both started and finished)."""
        done = [j for j in self.jobs if j.started_at is not None and j.finished_at is not None]
        if not done:
            return None
        last = max(done, key=lambda j: j.finished_at or 0.0)
        lane = sorted(
            (j for j in done if j.worker_id == last.worker_id), key=lambda j: j.started_at or 0
        )
        pairs = itertools.pairwise(lane)
        return Overhead(
            jobs=len(lane),
            to_first_start=(lane[0].started_at or 0) - self.first_sent,
            job_overrun=sum((j.finished_at or 0) - (j.started_at or 0) - job_seconds for j in lane),
            gaps=sum((b.started_at or 0) - (a.finished_at or 0) for a, b in pairs),
        )


@dataclass(frozen=True)
class Overhead:
    """The makespan of one worker's lane beyond its jobs' nominal time, in three parts that
    add up to it: to first start (request, commit, LPUSH, dispatch, claim), job overrun
    (claim and completion statements, timer slack) and gaps between its jobs (ack, next pop).
    """

    jobs: int
    to_first_start: float
    job_overrun: float
    gaps: float

    @property
    def total(self) -> float:
        return self.to_first_start + self.job_overrun + self.gaps


@dataclass
class RowResult:
    """A row and its runs; compute() fills in the figures."""

    row: Row
    runs: list[RunResult]
    makespan: float = math.nan
    overhead: float = math.nan
    speedup: float = math.nan
    efficiency: float = math.nan
    speedup_baseline: str = ""
    verdict: Verdict | None = None  # None until compute()
    reason: str = ""

    @property
    def makespans(self) -> list[float]:
        return [r.makespan for r in self.runs]

    @property
    def representative(self) -> RunResult:
        """The run whose makespan is closest to the median (drawn in the timeline)."""
        return min(self.runs, key=lambda r: abs(r.makespan - self.makespan))

    def api_latency_ms(self) -> dict[str, float]:
        return summary([s.latency for r in self.runs for s in r.shots], scale=1000)

    def queue_wait_ms(self) -> dict[str, float]:
        waits = [j.queue_wait for r in self.runs for j in r.jobs if j.queue_wait is not None]
        return summary(waits, scale=1000)

    def breakdown(self) -> Overhead | None:
        """The overhead breakdown of the representative run."""
        return self.representative.breakdown(self.row.spec.job_seconds)

    def startup_seconds(self) -> float:
        """Worker start-up before the row (only its first run starts workers, if any)."""
        return max(r.startup_seconds for r in self.runs)

    def compute(self) -> None:
        self.makespan = median(self.makespans)
        self.overhead = self.makespan - self.row.ideal_seconds
        if self.row.faulty:
            self._judge_ledgers()
            return
        problems = [p for run in self.runs for p in run.problems(self.row.orders)]
        # A timed row that kept a ledger too (on several hosts) must keep it as well.
        problems += [p for run in self.runs if run.ledger for p in run.ledger.problems]
        expected = self.row.expected_seconds
        if problems:
            self.verdict, self.reason = Verdict.FAIL, "; ".join(dict.fromkeys(problems))
        elif expected is None:
            self.verdict, self.reason = Verdict.MEASURED, "no expected time: measured, not judged"
        elif self.makespan <= expected + self.row.tolerance:
            self.verdict = Verdict.OK
            self.reason = f"within {self.row.tolerance:.3g} s of the expected {expected:.3g} s"
        else:
            self.verdict = Verdict.SLOW
            self.reason = (
                f"median {self.makespan:.3f} s is {self.makespan - expected:.3f} s over the "
                f"expected {expected:.3g} s (tolerance {self.row.tolerance:.3g} s)"
            )

    @property
    def ledger(self) -> Ledger | None:
        """The representative run's ledger (a Kata 4 row's)."""
        return self.representative.ledger

    def _judge_ledgers(self) -> None:
        """A Kata 4 row: judged by its ledgers (nothing lost or completed twice), not a time."""
        ledgers = [r.ledger for r in self.runs if r.ledger is not None]
        skipped = next((x.skipped for x in ledgers if x.skipped), "")
        problems = [p for x in ledgers for p in x.problems]
        if skipped:
            self.verdict, self.reason = Verdict.SKIPPED, skipped
        elif not ledgers:
            self.verdict, self.reason = Verdict.FAIL, "no ledger was kept"
        elif problems:
            self.verdict, self.reason = Verdict.FAIL, "; ".join(dict.fromkeys(problems))
        elif self.row.expect_loss:
            lost = ", ".join(str(x.lost) for x in ledgers)
            self.verdict = Verdict.OK
            self.reason = f"lost {lost} job(s) at the kills, as the kata's BLPOP does"
        else:
            x = ledgers[0]
            self.verdict = Verdict.OK
            self.reason = (
                f"{x.accepted} accepted: {x.completed} completed, {x.dead} dead, 0 lost, "
                "0 completed twice"
            )


def pass_words(rows: list[RowResult]) -> str:
    """What a pass of these rows means: a timed row is judged by its tolerance, a faulty
    (Kata 4) row by its ledger, and every order by the answer it got."""
    timed = any(not r.row.faulty for r in rows)
    faulty = any(r.row.faulty for r in rows)
    judged = {
        (True, False): "every row within its tolerance",
        (False, True): "every row's ledger as the row expects",
        (True, True): "every timed row within its tolerance, every faulty row's ledger as the "
        "row expects",
    }.get((timed, faulty), "no row")
    return f"{judged}, every order answered as expected"


@dataclass
class ApiVerdict:
    """The kata's fourth row: every order answered 202, at once."""

    statuses: dict[str, int]
    latency_ms: dict[str, float]
    verdict: Verdict
    reason: str


@dataclass
class SuiteResult:
    suite: Suite
    repeat: int
    started_at: float
    finished_at: float = 0.0
    rows: list[RowResult] = field(default_factory=list)
    api: ApiVerdict | None = None

    @property
    def passed(self) -> bool:
        """Every row within its tolerance and every order answered 202: a slow answer is
        reported (verdict "slow") but fails nothing, as the kata claims no figure for it.
        `mqlab run-experiment` exits with 1 when a suite has not passed."""
        rows_ok = all(r.verdict is not None and r.verdict.passes for r in self.rows)
        return rows_ok and self.api is not None and self.api.verdict is not Verdict.FAIL

    def failures(self) -> list[str]:
        out = [
            f"{r.row.name}: {r.verdict}: {r.reason}"
            for r in self.rows
            if r.verdict in (Verdict.FAIL, Verdict.SLOW)
        ]
        if self.api is not None and self.api.verdict is not Verdict.OK:
            out.append(f"API: {self.api.verdict}: {self.api.reason}")
        return out

    def compute(self) -> None:
        for row in self.rows:
            row.compute()
        for row in self.rows:
            self._speedup(row)
        self.api = self._api_verdict()

    def _speedup(self, result: RowResult) -> None:
        row = result.row
        same = [
            r
            for r in self.rows
            if r.row.workers == r.row.spec.concurrency == 1 and r.row.setup == row.setup
        ]
        if same and not math.isnan(same[0].makespan):
            base, result.speedup_baseline = same[0].makespan, f"measured: {same[0].row.name}"
        else:
            base = row.orders * row.spec.job_seconds
            result.speedup_baseline = "ideal serial time (N x T): no 1-worker row of this batch"
        result.speedup = speedup(base, result.makespan)
        result.efficiency = efficiency(result.speedup, row.slots)

    def _api_verdict(self) -> ApiVerdict:
        # A row that takes a backend away expects 503s: its ledger judges its answers.
        shots = [
            s for r in self.rows if not r.row.expects_refusals for run in r.runs for s in run.shots
        ]
        statuses = dict(Counter(str(s.status) for s in shots))
        latency = summary([s.latency for s in shots], scale=1000)
        if not shots and self.rows and all(r.row.expects_refusals for r in self.rows):
            why = "every row takes a backend away: its ledger judges its answers"
            return ApiVerdict(statuses, latency, Verdict.MEASURED, why)
        if not shots:
            return ApiVerdict(statuses, latency, Verdict.FAIL, "no request was sent")
        if set(statuses) != {"202"}:
            return ApiVerdict(
                statuses, latency, Verdict.FAIL, f"not every order got 202: {statuses}"
            )
        bar = self.suite.api_bar_ms()
        typical = f"{label(HEADLINE)} {latency[label(HEADLINE)]:.1f} ms"
        if latency["max"] >= bar:
            return ApiVerdict(
                statuses,
                latency,
                Verdict.SLOW,
                f"the slowest answer took {latency['max']:.1f} ms; expected under {bar:g} ms "
                f"({typical})",
            )
        return ApiVerdict(
            statuses,
            latency,
            Verdict.OK,
            f"all {len(shots)} orders answered 202; {typical}, max {latency['max']:.1f} ms",
        )
