"""When a failed job is tried again (issue 10's retry policy): at most `max_attempts`
attempts, the n-th retry due after `base · 2^(n-1)` seconds, capped at `cap`, with jitter.

The jitter is "equal jitter" (half the delay fixed, half drawn at random; see AWS's
"Exponential Backoff and Jitter"): a herd of jobs that failed together (a backend that went
away for all of them) comes back spread over half of each interval, and yet, below the cap,
every delay is at least the largest one the attempt before could have drawn, so the waits
only grow. Full jitter spreads more but can draw a retry sooner than the one before it, which
makes a schedule harder to read in a lab whose point is to show it. At the cap, delays spread
over [cap/2, cap].
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass

#: Environment variables that set the policy (the worker's flags take precedence).
ENV_MAX_ATTEMPTS = "MQLAB_MAX_ATTEMPTS"
ENV_BACKOFF_BASE = "MQLAB_BACKOFF_BASE"
ENV_BACKOFF_MAX = "MQLAB_BACKOFF_MAX"


class PolicyError(ValueError):
    """A policy that cannot be followed; the text says which value and why."""


@dataclass(frozen=True)
class RetryPolicy:
    """At most `max_attempts` attempts; retry n waits base · 2^(n-1) s, at most `cap` s."""

    max_attempts: int = 5
    base: float = 1.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 1000:
            raise PolicyError(f"max attempts must be 1..1000, not {self.max_attempts}")
        if not 0 < self.base <= 86_400:
            raise PolicyError(f"backoff base must be > 0 and <= 86400 s, not {self.base}")
        if not self.base <= self.cap <= 86_400:
            raise PolicyError(
                f"backoff max must be between the base ({self.base} s) and 86400 s, not {self.cap}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RetryPolicy:
        """The defaults, with what MQLAB_MAX_ATTEMPTS / _BACKOFF_BASE / _BACKOFF_MAX say."""
        env = os.environ if environ is None else environ
        default = cls()
        try:
            max_attempts = int(env.get(ENV_MAX_ATTEMPTS, default.max_attempts))
            base = float(env.get(ENV_BACKOFF_BASE, default.base))
            cap = float(env.get(ENV_BACKOFF_MAX, default.cap))
        except ValueError as exc:
            raise PolicyError(
                f"{ENV_MAX_ATTEMPTS}, {ENV_BACKOFF_BASE} and {ENV_BACKOFF_MAX} take numbers: {exc}"
            ) from None
        return cls(max_attempts=max_attempts, base=base, cap=cap)

    def __str__(self) -> str:
        return f"at most {self.max_attempts} attempts, backoff {self.base:g}-{self.cap:g} s"

    def attempt(self, attempt: int, since_replay: int) -> str:
        """An attempt as a log line names it: `attempt` counts every claim of the job,
        `since_replay` those since its last replay (jobs.replay_base), which max_attempts
        limits. After a replay they differ, and "attempt 6" on a worker allowing 5 read as a
        bug."""
        text = f"attempt {since_replay} of {self.max_attempts}"
        return text if since_replay == attempt else f"{text} after a replay, {attempt} in all"

    def args(self) -> list[str]:
        """The `mqlab worker` flags that set this policy (for the lab's supervisor)."""
        return [
            "--max-attempts", str(self.max_attempts),
            "--backoff-base", repr(self.base),
            "--backoff-max", repr(self.cap),
        ]  # fmt: skip

    def ceiling(self, failed_attempt: int) -> float:
        """The longest wait after attempt `failed_attempt` (1-based): base · 2^(n-1), capped."""
        if failed_attempt < 1:
            raise ValueError(f"attempts count from 1, not {failed_attempt}")
        # min() before the power would overflow: 2^1100 is past a float.
        exponent = min(failed_attempt - 1, 64)
        return min(self.cap, self.base * 2.0**exponent)

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after `failed_attempt`: in [ceiling/2, ceiling]."""
        ceiling = self.ceiling(failed_attempt)
        draw = (rng or random).random()
        return ceiling / 2 + draw * ceiling / 2

    def exhausted(self, attempts: int) -> bool:
        """True when a job that has had `attempts` attempts may not have another."""
        return attempts >= self.max_attempts
