"""Kata 4's ledger on fixed data: the arithmetic and the verdicts, without servers."""

from __future__ import annotations

import math

import pytest

from mqlab.experiments import Row
from mqlab.figures.ledger import Attempt, Marks, Replay, build
from mqlab.figures.results import RowResult, RunResult, Verdict
from mqlab.figures.shot import Shot

T0 = 1_800_000_000.0


def shot(i: int, status: int = 202, at: float = T0) -> Shot:
    return Shot(i, status, at, 0.002, i if status == 202 else None, None, None)


def done(job: str, n: int = 1, worker: str = "w1", at: float = T0) -> Attempt:
    return Attempt(job, n, worker, at, at + 0.1, "completed", None, None)


def row(**fields: object) -> Row:
    return Row.make(name="r", orders=3, workers=2, job_seconds=0.1, **fields)


def verdict(r: Row, ledger_run: RunResult) -> RowResult:
    result = RowResult(row=r, runs=[ledger_run])
    result.compute()
    return result


def run_of(ledger: object) -> RunResult:
    return RunResult([], [], T0, 0.0, False, [], ledger=ledger)  # type: ignore[arg-type]


def test_accepted_is_completed_plus_dead_plus_lost_and_a_loss_fails() -> None:
    r = row(kill_every=1.0)
    shots = [shot(0), shot(1), shot(2), shot(3, 503)]
    statuses = {"j0": "completed", "j1": "completed", "j2": "processing"}
    ledger = build(r, shots, statuses, [done("j0"), done("j1")], {"j0": 1, "j1": 1}, Marks())
    assert (ledger.accepted, ledger.refused, ledger.completed, ledger.dead) == (3, 1, 2, 0)
    assert ledger.lost == 1
    assert ledger.problems == ["1 accepted order(s) lost (neither completed nor dead)"]
    assert verdict(r, run_of(ledger)).verdict is Verdict.FAIL


def test_completed_twice_is_counted_from_the_events_and_fails() -> None:
    r = row(kill_every=1.0)
    statuses = {f"j{i}": "completed" for i in range(3)}
    ledger = build(r, [shot(i) for i in range(3)], statuses, [], {"j0": 2, "j1": 1}, Marks())
    assert ledger.completed_twice == 1 and ledger.lost == 0
    assert "1 job(s) completed twice" in ledger.problems


def test_a_500_fails_the_row_a_503_does_not() -> None:
    r = row(pg_stop_after=1.0)
    statuses = {"j0": "completed", "j1": "completed"}
    ok = build(r, [shot(0), shot(1), shot(2, 503)], statuses, [], {}, Marks())
    assert ok.problems == [] and ok.refused == 1
    bad = build(r, [shot(0), shot(1), shot(2, 500)], statuses, [], {}, Marks())
    assert bad.problems == ["answers other than 202 or 503: {'500': 1}"]


def test_the_blpop_row_passes_when_it_loses_and_fails_when_it_does_not() -> None:
    r = row(fetch="blpop", expect_loss=True, kill_every=1.0)
    shots = [shot(i) for i in range(3)]
    lossy = build(r, shots, {"j0": "completed", "j1": "processing"}, [], {}, Marks())
    assert lossy.lost == 2 and lossy.problems == []
    result = verdict(r, run_of(lossy))
    assert result.verdict is Verdict.OK and "lost 2" in result.reason
    clean = build(r, shots, {f"j{i}": "completed" for i in range(3)}, [], {}, Marks())
    assert clean.problems and verdict(r, run_of(clean)).verdict is Verdict.FAIL


def test_kill_recovery_is_kill_to_the_next_start_and_work_twice_is_counted() -> None:
    kill = T0 + 1.0
    history = [
        Attempt("j0", 1, "w1", T0 + 0.95, T0 + 4.0, "crashed", None, None),
        done("j0", 2, "w2", at=T0 + 4.0),
        Attempt("j1", 1, "w1", T0 + 0.5, T0 + 5.0, "crashed", None, None),
        done("j1", 2, "w3", at=T0 + 3.0),
        done("j2", 1, "w2"),
    ]
    statuses = {f"j{i}": "completed" for i in range(3)}
    ledger = build(row(kill_every=1.0), [shot(i) for i in range(3)], statuses, history, {},
                   Marks(kills=[(kill, "w1")]))  # fmt: skip
    assert ledger.work_twice == 2
    assert sorted(ledger.recovery) == [2.0, 3.0]
    assert math.isclose(ledger.recovery_p50, 2.5) and ledger.recovery_max == 3.0
    assert ledger.attempts_histogram == {1: 1, 2: 2}


def test_backoff_delays_are_checked_against_the_policy() -> None:
    r = row(fail_rate=0.3, backoff_base=1.0, backoff_max=10.0)
    end = T0 + 0.1
    history = [
        Attempt("j0", 1, "w1", T0, end, "failed", "x", end + 0.7),  # c = 1: in [0.5, 1]
        Attempt("j0", 2, "w1", end + 0.8, end + 0.9, "failed", "x", end + 0.9 + 0.5),  # c = 2: not
        done("j0", 3, at=end + 2.0),
    ]
    ledger = build(r, [shot(0)], {"j0": "completed"}, history, {}, Marks())
    assert (ledger.delays_checked, ledger.delays_in_policy) == (2, 1)
    assert math.isclose(ledger.backoff_seconds, 0.8 + 1.1, abs_tol=1e-3)
    assert any("outside the policy" in p for p in ledger.problems)


def test_poison_rows_expect_their_dead_and_the_replay_brings_them_back() -> None:
    r = row(poison_orders=1)
    statuses = {"j0": "completed", "j1": "completed", "j2": "dead"}
    assert build(r, [shot(i) for i in range(3)], statuses, [], {}, Marks()).problems == []
    none_dead = {"j0": "completed", "j1": "completed", "j2": "completed"}
    assert build(r, [shot(i) for i in range(3)], none_dead, [], {}, Marks()).problems == [
        "0 dead, expected 1"
    ]
    replayed = row(poison_orders=1, replay_without_poison=True)
    ledger = build(replayed, [shot(i) for i in range(3)], none_dead, [], {}, Marks(),
                   replay=Replay(dead_before=1, replayed=1, completed_after=3))  # fmt: skip
    assert ledger.problems == []


def test_a_row_these_servers_cannot_run_is_skipped_not_failed() -> None:
    r = row(pg_stop_after=1.0)
    ledger = build(r, [], {}, [], {}, Marks(skipped="skipped: not ours"))
    result = verdict(r, run_of(ledger))
    assert result.verdict is Verdict.SKIPPED and result.verdict.passes


def test_flush_and_pg_recovery_are_one_figure_each() -> None:
    flushed = T0 + 2.0
    history = [done("j0", at=T0 + 1.0), done("j1", at=T0 + 13.0), done("j2", at=T0 + 9.0)]
    statuses = {f"j{i}": "completed" for i in range(3)}
    shots = [shot(i) for i in range(3)]
    ledger = build(row(flushall_after=2.0), shots, statuses, history, {},
                   Marks(flushall_at=flushed))  # fmt: skip
    assert ledger.recovery == [11.0] and ledger.recovery_kind == "FLUSHALL -> last start"
    back = T0 + 5.0
    answers = [shot(0, at=T0), shot(1, 503, at=T0 + 3), shot(2, at=T0 + 5.5)]
    pg = build(row(pg_stop_after=1.0), answers, {"j0": "completed", "j2": "completed"}, [], {},
               Marks(pg_stopped_at=T0 + 1, pg_started_at=back))  # fmt: skip
    assert pg.recovery == [pytest.approx(0.502)] and pg.refused == 1 and pg.problems == []
