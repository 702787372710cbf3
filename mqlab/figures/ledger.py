"""A Kata 4 row's ledger: where every order went, and whether the row kept its promises.

accepted (202) = completed + dead + lost; nothing lost and nothing completed twice, except
in the BLPOP row (expect_loss), whose lesson is the loss itself. Pure arithmetic on what the
runner read (the answers, job_history, the job_finished events, the lab's marks), so it is
tested on fixed data.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from mqlab.experiments import Row
from mqlab.figures.shot import Shot
from mqlab.figures.stats import json_number, median
from mqlab.system.retry_policy import RetryPolicy

#: Attempts that ended without the work's result being recorded: the work may run again.
INTERRUPTED = ("crashed", "reclaimed", "handed_back")
#: Slack allowed when a recorded delay is compared with the policy's [c/2, c] (clock rounding).
DELAY_SLACK = 0.005


@dataclass
class Marks:
    """What the lab did during a run, and when (epoch seconds)."""

    kills: list[tuple[float, str]] = field(default_factory=list)  # (when, worker killed)
    restarts: list[tuple[float, str]] = field(default_factory=list)  # (when, worker that died)
    flushall_at: float | None = None
    pg_stopped_at: float | None = None
    pg_started_at: float | None = None
    cut_at: float | None = None  # a host's link cut (a partition) ...
    healed_at: float | None = None  # ... and healed
    cut_host: str = ""
    primary_killed_at: float | None = None  # the Valkey primary SIGKILLed (a failover) ...
    promoted_at: float | None = None  # ... and the Sentinels name the replica instead
    skipped: str = ""  # why a scenario could not run here (the row is skipped, not failed)

    def to_json(self) -> dict[str, object]:
        return {
            "kills": [{"at": t, "worker": w} for t, w in self.kills],
            "restarts": [{"at": t, "worker": w} for t, w in self.restarts],
            "flushallAt": self.flushall_at,
            "pgStoppedAt": self.pg_stopped_at,
            "pgStartedAt": self.pg_started_at,
            "cutAt": self.cut_at,
            "healedAt": self.healed_at,
            "cutHost": self.cut_host or None,
            "primaryKilledAt": self.primary_killed_at,
            "promotedAt": self.promoted_at,
            "skipped": self.skipped or None,
        }


@dataclass(frozen=True)
class Attempt:
    """One row of job_history (epoch seconds)."""

    job_id: str
    attempt: int
    worker_id: str | None
    started_at: float | None
    finished_at: float | None
    outcome: str
    error: str | None
    next_attempt_at: float | None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Attempt:
        return cls(*row)


@dataclass(frozen=True)
class Replay:
    """The replay after a poison row: dead jobs queued again with the pattern switched off."""

    dead_before: int
    replayed: int
    completed_after: int


@dataclass
class Ledger:
    accepted: int
    refused: int  # 503: said so, not accepted
    other: dict[str, int]  # any other answer (a 500, a connection error as "0")
    completed: int
    dead: int
    lost: int
    work_twice: int
    completed_twice: int
    recovery_kind: str = ""
    recovery: list[float] = field(default_factory=list)  # seconds, one per recovery
    attempts_histogram: dict[int, int] = field(default_factory=dict)
    backoff_seconds: float = 0.0  # waits between a failed attempt and the next start
    delays_checked: int = 0
    delays_in_policy: int = 0
    crashed_workers: int = 0
    kills: int = 0  # workers the lab SIGKILLed (each replaced)
    replay: Replay | None = None
    #: Completions a worker attempted after its claim was taken over, refused by the guarded
    #: claim (job_lost events): a partitioned worker's late ones.
    refused_late: int = 0
    #: Jobs the reconciler queued again (their messages lost: FLUSHALL, a failover).
    reconciled: int = 0
    #: Named durations of the row's disruption (seconds): "kill -> first 202", ...
    timings: dict[str, float] = field(default_factory=dict)
    skipped: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def recovery_p50(self) -> float:
        return median(self.recovery) if self.recovery else math.nan

    @property
    def recovery_max(self) -> float:
        return max(self.recovery) if self.recovery else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "refused": self.refused,
            "otherStatuses": self.other,
            "completed": self.completed,
            "dead": self.dead,
            "lost": self.lost,
            "workRunTwice": self.work_twice,
            "completedTwice": self.completed_twice,
            "recoveryKind": self.recovery_kind or None,
            "recoverySeconds": self.recovery,
            "recoveryP50Seconds": json_number(self.recovery_p50),
            "recoveryMaxSeconds": json_number(self.recovery_max),
            "attemptsHistogram": {str(k): v for k, v in self.attempts_histogram.items()},
            "backoffSeconds": self.backoff_seconds,
            "delaysChecked": self.delays_checked,
            "delaysWithinPolicy": self.delays_in_policy,
            "crashedWorkers": self.crashed_workers,
            "kills": self.kills,
            "replay": None if self.replay is None else vars(self.replay),
            "refusedLate": self.refused_late,
            "reconciled": self.reconciled,
            "timings": self.timings,
            "skipped": self.skipped or None,
            "problems": self.problems,
        }


def by_job(attempts: list[Attempt]) -> dict[str, list[Attempt]]:
    out: dict[str, list[Attempt]] = {}
    for a in sorted(attempts, key=lambda a: (a.job_id, a.attempt)):
        out.setdefault(a.job_id, []).append(a)
    return out


def work_twice(history: dict[str, list[Attempt]]) -> int:
    """Jobs with an interrupted attempt (crashed, reclaimed, handed back) before another one."""
    return sum(
        1 for attempts in history.values() if any(a.outcome in INTERRUPTED for a in attempts[:-1])
    )


def kill_recoveries(
    history: dict[str, list[Attempt]], kills: list[tuple[float, str]]
) -> list[float]:
    """Kill -> the next start of each job the killed worker had in hand."""
    out = []
    for at, worker in kills:
        for attempts in history.values():
            for a, after in itertools.pairwise(attempts):
                held = a.worker_id == worker and a.started_at is not None and a.started_at <= at
                if held and a.outcome in INTERRUPTED and after.started_at is not None:
                    out.append(after.started_at - at)
    return out


def flush_recovery(history: dict[str, list[Attempt]], flushed_at: float) -> list[float]:
    """FLUSHALL -> the last start of any attempt after it (one figure): the jobs Redis lost
    start again only once the reconciler has queued them (its grace, then its next pass)."""
    starts = [
        a.started_at
        for attempts in history.values()
        for a in attempts
        if a.started_at is not None and a.started_at >= flushed_at
    ]
    return [max(starts) - flushed_at] if starts else []


def pg_recovery(shots: list[Shot], started_at: float) -> list[float]:
    """PostgreSQL back -> the first 202 answered after it (one figure)."""
    answered = [s.sent_at + s.latency for s in shots if s.status == 202 and s.sent_at >= started_at]
    return [min(answered) - started_at] if answered else []


def taken_over(history: dict[str, list[Attempt]], host: str, cut_at: float) -> list[float]:
    """cut -> the next start of each job a worker of `host` had in hand at the cut: how long
    the other hosts took to take its jobs over (the heartbeat's TTL, then the reaper)."""
    out = []
    for attempts in history.values():
        for a, after in itertools.pairwise(attempts):
            ours = (a.worker_id or "").startswith(f"{host}-")
            began = a.started_at is not None and a.started_at <= cut_at
            held = ours and began and (a.finished_at or math.inf) >= cut_at
            if held and after.started_at is not None:
                out.append(after.started_at - cut_at)
    return out


def failover_timings(
    shots: list[Shot], history: dict[str, list[Attempt]], killed_at: float
) -> dict[str, float]:
    """The Valkey primary killed -> the API's 202s again (the first 202 sent after the last
    refusal: an order sent just as the primary died may still be answered by it), and -> the
    last job's end."""
    out: dict[str, float] = {}
    refused = [s.sent_at for s in shots if s.status != 202 and s.sent_at >= killed_at]
    last_refused = max(refused, default=killed_at)
    if again := pg_recovery(shots, last_refused):
        out["kill -> 202s again"] = last_refused + again[0] - killed_at
    ends = [a.finished_at for t in history.values() for a in t if a.finished_at is not None]
    if ends:
        out["kill -> last job"] = max(ends) - killed_at
    return out


def backoff(history: dict[str, list[Attempt]], policy: RetryPolicy) -> tuple[float, int, int]:
    """(seconds between failed attempts and their retries, delays checked, delays within the
    policy's [c/2, c]): each recorded delay (next_attempt_at - end) against attempt n's c."""
    waited, checked, within = 0.0, 0, 0
    for attempts in history.values():
        for a, after in itertools.pairwise(attempts):
            if a.outcome != "failed" or a.finished_at is None:
                continue
            if after.started_at is not None:
                waited += after.started_at - a.finished_at
            if a.next_attempt_at is not None:
                delay, ceiling = a.next_attempt_at - a.finished_at, policy.ceiling(a.attempt)
                checked += 1
                within += ceiling / 2 - DELAY_SLACK <= delay <= ceiling + DELAY_SLACK
    return waited, checked, within


def build(
    row: Row,
    shots: list[Shot],
    statuses: dict[str, int],
    attempts: list[Attempt],
    finished_events: dict[str, int],
    marks: Marks,
    *,
    timed_out: bool = False,
    crashed_workers: int = 0,
    replay: Replay | None = None,
    refused_late: int = 0,
    reconciled: int = 0,
) -> Ledger:
    """The ledger of one run. `statuses`: job id -> status; `finished_events`: job id ->
    completions seen (job_finished events of distinct attempts or workers; more than one:
    completed twice)."""
    answers = Counter(str(s.status) for s in shots)
    accepted, refused = answers.pop("202", 0), answers.pop("503", 0)
    completed = sum(1 for s in statuses.values() if s == "completed")
    dead = sum(1 for s in statuses.values() if s == "dead")
    history = by_job(attempts)
    ledger = Ledger(
        accepted=accepted,
        refused=refused,
        other=dict(answers),
        completed=completed,
        dead=dead,
        lost=accepted - completed - dead,
        work_twice=work_twice(history),
        completed_twice=sum(1 for n in finished_events.values() if n > 1),
        attempts_histogram=dict(sorted(Counter(len(t) for t in history.values()).items())),
        crashed_workers=crashed_workers,
        kills=len(marks.kills),
        replay=replay,
        refused_late=refused_late,
        reconciled=reconciled,
        skipped=marks.skipped,
    )
    if marks.kills:
        ledger.recovery_kind, ledger.recovery = (
            "kill -> next start",
            kill_recoveries(history, marks.kills),
        )
    elif marks.flushall_at is not None:
        ledger.recovery_kind = "FLUSHALL -> last start"
        ledger.recovery = flush_recovery(history, marks.flushall_at)
    elif marks.pg_started_at is not None:
        ledger.recovery_kind = "PostgreSQL back -> first 202"
        ledger.recovery = pg_recovery(shots, marks.pg_started_at)
    elif marks.cut_at is not None:
        ledger.recovery_kind = "cut -> taken over"
        ledger.recovery = taken_over(history, marks.cut_host, marks.cut_at)
        if marks.healed_at is not None:
            ledger.timings["cut -> healed"] = marks.healed_at - marks.cut_at
    elif marks.primary_killed_at is not None:
        ledger.timings = failover_timings(shots, history, marks.primary_killed_at)
        if marks.promoted_at is not None:
            ledger.timings["kill -> replica promoted"] = marks.promoted_at - marks.primary_killed_at
        ledger.recovery_kind = "primary killed -> 202s again"
        again = ledger.timings.get("kill -> 202s again")
        ledger.recovery = [] if again is None else [again]
    policy = row.spec.policy or RetryPolicy()
    ledger.backoff_seconds, ledger.delays_checked, ledger.delays_in_policy = backoff(
        history, policy
    )
    ledger.problems = [] if ledger.skipped else judge(row, ledger, timed_out)
    return ledger


def judge(row: Row, ledger: Ledger, timed_out: bool) -> list[str]:
    """What the row promised and this run did not keep (empty: it passes)."""
    out = []
    if ledger.other:
        out.append(f"answers other than 202 or 503: {ledger.other}")
    if ledger.completed_twice:
        out.append(f"{ledger.completed_twice} job(s) completed twice")
    if row.expect_loss:
        if ledger.lost <= 0:
            out.append("expected the kata's BLPOP to lose the jobs in hand at the kills; none lost")
        return out
    if timed_out:
        out.append("timed out waiting for every accepted job to be completed or dead")
    if ledger.lost:
        out.append(f"{ledger.lost} accepted order(s) lost (neither completed nor dead)")
    expected_dead = 0 if row.replay_without_poison else row.poison_orders + row.crash_orders
    if ledger.dead != expected_dead:
        out.append(f"{ledger.dead} dead, expected {expected_dead}")
    replay = ledger.replay
    if row.replay_without_poison and replay is not None and replay.dead_before != row.poison_orders:
        out.append(f"{replay.dead_before} dead before the replay, expected {row.poison_orders}")
    if ledger.delays_checked != ledger.delays_in_policy:
        out.append(
            f"{ledger.delays_checked - ledger.delays_in_policy} of {ledger.delays_checked} "
            "backoff delays outside the policy's [c/2, c]"
        )
    crashes_expected = row.spec.crash_rate or row.crash_orders or row.kill_every
    if row.poison_orders and not crashes_expected and ledger.crashed_workers:
        out.append(f"{ledger.crashed_workers} worker(s) died on poison orders")
    return out
