"""The worker spec: validated at once, the same to the lab, the worker's flags and a suite."""

from __future__ import annotations

from dataclasses import replace

import pytest
import typer

from mqlab.experiments import ROW_KEYS, load
from mqlab.faces.cli import app
from mqlab.system.faults import Faults
from mqlab.system.retry_policy import RetryPolicy
from mqlab.system.spec import SpecError, WorkerSpec, options


def parsed(args: list[str]) -> dict[str, object]:
    """`mqlab worker ARGS` as the command parses them (field name -> value)."""
    worker = typer.main.get_command(app).commands["worker"]  # type: ignore[attr-defined]
    context = worker.make_context("worker", args)
    return {k: v for k, v in context.params.items() if k not in ("redis_url", "database_url")}


SPECS = [
    WorkerSpec(),
    WorkerSpec(worker_id="w7", job_seconds=0.25, work="cpu", fetch="blpop"),
    WorkerSpec(max_attempts=3, fail_rate=0.3, crash_rate=0.1, seed=4, crash_on="^crash"),
    WorkerSpec(backoff_base=0.2, backoff_max=2.0, poison=""),
    *(r.spec for name in ("kata3", "kata4", "scaling") for r in load(name).rows),
]


@pytest.mark.parametrize("spec", SPECS)
def test_a_spec_goes_to_a_workers_flags_and_back(spec: WorkerSpec) -> None:
    back = WorkerSpec.from_options(parsed(spec.to_args()), environ={})
    assert back == spec
    assert (back.policy, back.faults) == (spec.policy, spec.faults)


def test_a_policy_is_whole_or_left_to_the_environment() -> None:
    """One field set fills the others (the cap at least the base), so that its flags say the
    whole policy; none set, the worker's environment decides."""
    assert WorkerSpec(max_attempts=3).policy == RetryPolicy(max_attempts=3)
    assert WorkerSpec(backoff_base=90).policy == RetryPolicy(base=90, cap=90)
    assert WorkerSpec().policy is None and "--max-attempts" not in WorkerSpec().to_args()
    env = {"MQLAB_MAX_ATTEMPTS": "7", "MQLAB_BACKOFF_MAX": "5"}
    spec = WorkerSpec.from_options(parsed(["--backoff-base", "0.5"]), environ=env)
    assert spec.policy == RetryPolicy(max_attempts=7, base=0.5, cap=5)
    spec = WorkerSpec.from_options(parsed(["--max-attempts", "2"]), environ=env)
    assert spec.policy == RetryPolicy(max_attempts=2, cap=5)  # the flag before the variable
    with pytest.raises(SpecError, match="MQLAB_MAX_ATTEMPTS must be a whole number, not 'x'"):
        WorkerSpec.from_options({}, environ={"MQLAB_MAX_ATTEMPTS": "x"})


def test_faults_come_from_their_fields() -> None:
    assert WorkerSpec().faults == Faults()
    spec = WorkerSpec(fail_rate=0.5, seed=2, poison="^p")
    assert spec.faults == Faults(fail_rate=0.5, poison="^p", seed=2)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"job_seconds": float("nan")}, "--job-seconds must be a number of seconds"),
        ({"work": "dance"}, "--work must be one of sleep, cpu, not 'dance'"),
        ({"fetch": "lpop"}, "--fetch must be one of reliable, blpop, not 'lpop'"),
        ({"fail_rate": 2.0}, "--fail-rate must be a probability from 0 to 1"),
        ({"crash_on": "("}, "--crash-on is not a regular expression"),
        ({"max_attempts": 0}, "max attempts must be 1..1000"),
        ({"backoff_base": 5, "backoff_max": 1}, "backoff max must be between"),
    ],
)
def test_a_spec_that_cannot_run_is_refused_at_once(fields: dict[str, object], says: str) -> None:
    with pytest.raises(SpecError, match=says):
        WorkerSpec(**fields)  # type: ignore[arg-type]


def test_a_spec_is_frozen_and_compares_by_its_options() -> None:
    spec = WorkerSpec(job_seconds=1.0)
    with pytest.raises(AttributeError):
        spec.job_seconds = 2.0  # type: ignore[misc]
    assert replace(spec, worker_id="w1") != spec
    assert replace(spec, worker_id="w1", job_seconds=1) == replace(spec, worker_id="w1")


def test_every_option_but_the_id_and_poison_is_a_suite_row_key() -> None:
    """The row's keys are the spec's fields' names: a new option is a row key by itself."""
    names = {f.name for f in options()}
    assert names - ROW_KEYS == {"worker_id", "poison"}
