"""The failures a worker injects: validated, reproducible with a seed, at the rates asked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from mqlab.faces.cli import app
from mqlab.system.faults import Dice, FaultError, FaultKind, Faults


def sequence(dice: Dice, n: int = 200) -> list[tuple[str, float] | None]:
    return [(f.kind, f.at) if (f := dice.roll()) else None for _ in range(n)]


def test_a_seed_makes_each_workers_draws_reproducible_and_distinct() -> None:
    faults = Faults(fail_rate=0.3, crash_rate=0.1, seed=42)
    assert sequence(faults.dice("w1")) == sequence(faults.dice("w1"))
    assert sequence(faults.dice("w1")) != sequence(faults.dice("w2"))
    assert sequence(Faults(fail_rate=0.3, seed=1).dice("w1")) != sequence(
        Faults(fail_rate=0.3, seed=2).dice("w1")
    )


def test_the_rates_are_what_was_asked_and_faults_come_part_way() -> None:
    dice = Faults(fail_rate=0.3, crash_rate=0.1, seed=3).dice("w1")
    draws = [dice.roll() for _ in range(20_000)]
    fails = sum(1 for d in draws if d and d.kind is FaultKind.FAIL) / len(draws)
    crashes = sum(1 for d in draws if d and d.kind is FaultKind.CRASH) / len(draws)
    assert 0.28 < fails < 0.32 and 0.085 < crashes < 0.115
    assert all(0.1 <= d.at <= 0.9 for d in draws if d)
    assert not any(Faults().dice("w1").roll() for _ in range(1000))  # none by default


def test_poison_is_a_pattern_and_can_be_switched_off() -> None:
    assert Faults().dice("w").poisoned("a poison pill")
    assert not Faults().dice("w").poisoned("Laptop")
    assert Faults(poison=r"^bad\b").dice("w").poisoned("bad apple")
    assert not Faults(poison=r"^bad\b").dice("w").poisoned("a bad apple")
    assert not Faults(poison="").dice("w").poisoned("poison")


@pytest.mark.parametrize(
    ("faults", "says"),
    [
        ({"fail_rate": 1.5}, "--fail-rate must be a probability"),
        ({"crash_rate": -0.1}, "--crash-rate must be a probability"),
        ({"fail_rate": float("nan")}, "--fail-rate must be a probability"),
        ({"fail_rate": 0.7, "crash_rate": 0.5}, "at most 1"),
        ({"poison": "("}, "--poison is not a regular expression"),
    ],
)
def test_bad_settings_say_what_is_wrong(faults: dict[str, object], says: str) -> None:
    with pytest.raises(FaultError, match=says):
        Faults(**faults)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--fail-rate", "2"], "--fail-rate must be a probability from 0 to 1"),
        (["--poison", "[x"], "--poison is not a regular expression"),
        (["--max-attempts", "0"], "max attempts must be 1..1000"),
        (["--backoff-base", "5", "--backoff-max", "1"], "backoff max must be between"),
    ],
)
def test_the_worker_refuses_bad_flags_before_it_connects(args: list[str], says: str) -> None:
    """Checked before any server is looked for: URLs that lead nowhere are never tried."""
    result = CliRunner().invoke(
        app, ["worker", *args, "--redis-url", "redis://nowhere:1", "--database-url", "x"]
    )
    assert result.exit_code == 1
    assert says in result.output


def test_the_flags_the_lab_passes_are_the_ones_the_worker_reads() -> None:
    faults = Faults(fail_rate=0.25, crash_rate=0.05, poison="^p", seed=9)
    args = faults.args()
    assert args == [
        "--fail-rate", "0.25", "--crash-rate", "0.05", "--poison", "^p", "--seed", "9",
    ]  # fmt: skip


def test_crash_on_is_a_pattern_off_by_default_and_passed_as_a_flag() -> None:
    assert Faults(crash_on="crash").dice("w").crashes_on("crash #1")
    assert not Faults(crash_on="crash").dice("w").crashes_on("Laptop")
    assert not Faults().dice("w").crashes_on("crash")
    assert "--crash-on" not in Faults().args()
    assert Faults(crash_on="^x").args()[-2:] == ["--crash-on", "^x"]
    with pytest.raises(FaultError, match="--crash-on is not a regular expression"):
        Faults(crash_on="(")
