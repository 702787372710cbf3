"""experiments/kata4.toml and Kata 4's row fields: loaded, validated with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mqlab.experiments import ExperimentError, load
from mqlab.system.faults import Faults
from mqlab.system.retry_policy import RetryPolicy


def test_kata4_has_the_issues_seven_rows_each_judged_by_its_ledger() -> None:
    suite = load("kata4")
    rows = {r.name: r for r in suite.rows}
    assert len(rows) == 7 and all(r.faulty for r in suite.rows)
    retries = rows["retries"]
    assert (retries.orders, retries.workers, retries.spec.fail_rate) == (100, 4, 0.3)
    assert retries.spec.policy == RetryPolicy(max_attempts=10, base=0.2, cap=2.0)
    poison = rows["poison, then replay"]
    assert (poison.orders, poison.poison_orders, poison.replay_without_poison) == (50, 3, True)
    crash = rows["crash loop"]
    assert crash.restart_crashed and crash.spec.faults.crash_on
    kill, blpop = rows["kill -9"], rows["the kata's BLPOP"]
    assert (kill.orders, kill.workers, kill.kill_every, kill.spec.fetch) == (
        500,
        4,
        1.0,
        "reliable",
    )
    assert (blpop.spec.fetch, blpop.expect_loss, blpop.kill_every) == ("blpop", True, 1.0)
    assert rows["Redis loses its data"].flushall_after is not None
    pg = rows["PostgreSQL restarts"]
    assert pg.pg_stop_after is not None and pg.pg_stop_seconds == 3 and pg.fire_seconds


def test_kata3_and_scaling_rows_stay_plain() -> None:
    for name in ("kata3", "scaling"):
        for r in load(name).rows:
            assert not r.faulty and r.spec.policy is None and r.spec.faults == Faults()


HEAD = '[suite]\nname = "x"\n[[row]]\norders = 10\nworkers = 2\n'


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("fail_rate = 1.5", "fail_rate must be a probability from 0 to 1"),
        ("fail_rate = -1", "fail_rate must be >= 0"),
        ("poison_orders = 11", "poison_orders + crash_orders (11) cannot exceed orders (10)"),
        ("fetch = 'lpop'", "fetch must be one of reliable, blpop"),
        ("expect_loss = true", "expect_loss is for fetch"),
        ("expect_loss = 1\nfetch = 'blpop'", "expect_loss must be true or false"),
        ("replay_without_poison = true", "replay_without_poison needs poison_orders > 0"),
        ("kill_every = 0", "kill_every must be > 0"),
        ("max_attempts = 0", "max attempts must be 1..1000"),
        ("seed = 1.5", "seed must be a whole number"),
        ("crash_on = '('", "crash_on is not a regular expression"),
        ("kil_every = 1", "unknown key(s) ['kil_every']"),
    ],
)
def test_a_bad_kata4_row_names_the_problem(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(HEAD + extra + "\n")
    with pytest.raises(ExperimentError, match="row 1") as caught:
        load(str(path))
    assert message in str(caught.value)
