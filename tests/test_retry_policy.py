"""The retry policy's schedule: bounds, growth, cap, the spread of its jitter, and its errors."""

from __future__ import annotations

import random
import statistics

import pytest

from mqlab.system.retry_policy import PolicyError, RetryPolicy


def test_ceilings_double_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base=1.0, cap=60.0)
    assert [policy.ceiling(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert policy.ceiling(5000) == 60  # no overflow however many attempts


def test_every_delay_is_within_its_bounds_and_never_shorter_than_the_last_ones_could_be() -> None:
    policy = RetryPolicy(max_attempts=8, base=0.5, cap=20.0)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = policy.ceiling(attempt)
        delays = [policy.delay(attempt, rng) for _ in range(2000)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        if attempt > 1 and ceiling == 2 * policy.ceiling(attempt - 1):
            # Equal jitter, below the cap: the shortest wait now is the longest the attempt
            # before could draw.
            assert min(delays) >= policy.ceiling(attempt - 1) - 1e-9


def test_the_jitter_spreads_a_herd_over_half_of_each_interval() -> None:
    policy = RetryPolicy(base=4.0, cap=60.0)
    rng = random.Random(1)
    delays = [policy.delay(1, rng) for _ in range(10_000)]
    # Uniform on [2, 4]: mean 3, standard deviation 2 / sqrt(12) ≈ 0.577; every quarter used.
    assert statistics.fmean(delays) == pytest.approx(3.0, abs=0.05)
    assert statistics.pstdev(delays) == pytest.approx(0.577, abs=0.03)
    quarters = [sum(2 + q * 0.5 <= d < 2.5 + q * 0.5 for d in delays) for q in range(4)]
    assert min(quarters) > 2000


def test_a_seeded_schedule_repeats() -> None:
    policy = RetryPolicy()
    first = [policy.delay(n, random.Random(42)) for n in range(1, 6)]
    assert first == [policy.delay(n, random.Random(42)) for n in range(1, 6)]


def test_attempts_run_out_at_the_maximum() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.exhausted(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_the_environment_sets_the_policy_and_bad_values_say_which() -> None:
    env = {"MQLAB_MAX_ATTEMPTS": "7", "MQLAB_BACKOFF_BASE": "0.25", "MQLAB_BACKOFF_MAX": "5"}
    assert RetryPolicy.from_env(env) == RetryPolicy(max_attempts=7, base=0.25, cap=5.0)
    assert RetryPolicy.from_env({}) == RetryPolicy(max_attempts=5, base=1.0, cap=60.0)
    with pytest.raises(PolicyError, match="take numbers"):
        RetryPolicy.from_env({"MQLAB_MAX_ATTEMPTS": "many"})
    with pytest.raises(PolicyError, match="backoff max must be between the base"):
        RetryPolicy.from_env({"MQLAB_BACKOFF_BASE": "10", "MQLAB_BACKOFF_MAX": "5"})
    with pytest.raises(PolicyError, match=r"max attempts must be 1\.\.1000"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="attempts count from 1"):
        RetryPolicy().ceiling(0)


def test_an_attempt_is_named_by_the_tries_the_policy_counts() -> None:
    """After a replay the worker logged "attempt 6" while allowing at most 5."""
    policy = RetryPolicy(max_attempts=5)
    assert policy.attempt(2, 2) == "attempt 2 of 5"
    assert policy.attempt(6, 1) == "attempt 1 of 5 after a replay, 6 in all"
