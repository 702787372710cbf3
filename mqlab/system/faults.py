"""Failures a worker injects on purpose, so that retries, dead letters and recovery can be
seen and measured: reproducible with a seed.

- `fail_rate`: each attempt fails with this probability, part-way through its work, with a
  transient error (retried by the policy).
- `crash_rate`: each attempt kills the worker process with this probability, part-way through
  its work (`os._exit`: no clean-up, no hand-back, as a kill -9 or an OOM would).
- `poison`: a regular expression; an order whose product matches it fails permanently, at
  once, on every attempt (dead after one). The empty pattern poisons nothing.
- `crash_on`: a regular expression; an order whose product matches kills the worker that
  takes it, part-way, on every attempt (a crash loop: dead after the maximum attempts, as
  each claim counts one). Empty (the default): none.

With a seed, a worker's draws depend on the seed and its id only: the same run with the same
workers fails the same attempts of each worker (which jobs those are depends on who takes
what, which the queue decides).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from enum import StrEnum

#: What matches poison orders unless told otherwise (the kata 4 drill's products say it).
DEFAULT_POISON = "poison"


class FaultError(ValueError):
    """Fault settings that cannot be used; the text says which and why."""


class JobFailed(Exception):
    """An attempt's work failed. `permanent`: retrying cannot help (dead at once)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


class FaultKind(StrEnum):
    FAIL = "fail"  # transient: retried
    CRASH = "crash"  # the worker process dies


@dataclass(frozen=True)
class Fault:
    """What happens to one attempt: `kind`, `at` this fraction of its work (0..1)."""

    kind: FaultKind
    at: float


@dataclass(frozen=True)
class Faults:
    """The failures a worker injects (none by default)."""

    fail_rate: float = 0.0
    crash_rate: float = 0.0
    poison: str = DEFAULT_POISON
    seed: int | None = None
    crash_on: str = ""

    def __post_init__(self) -> None:
        for name in ("fail_rate", "crash_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 1):
                flag = "--" + name.replace("_", "-")
                raise FaultError(f"{flag} must be a probability from 0 to 1, not {value}")
        total = self.fail_rate + self.crash_rate
        if total > 1:
            raise FaultError(f"--fail-rate + --crash-rate must be at most 1, not {total:g}")
        for flag, pattern in (("--poison", self.poison), ("--crash-on", self.crash_on)):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise FaultError(f"{flag} is not a regular expression: {exc}") from None

    def args(self) -> list[str]:
        """The `mqlab worker` flags that set these faults (for the lab's supervisor)."""
        out = ["--fail-rate", repr(self.fail_rate), "--crash-rate", repr(self.crash_rate)]
        out += ["--poison", self.poison]
        if self.seed is not None:
            out += ["--seed", str(self.seed)]
        # Only when set: a worker of an older mqlab (or kata3's flags) stays as it was.
        out += ["--crash-on", self.crash_on] if self.crash_on else []
        return out

    def dice(self, worker_id: str) -> Dice:
        return Dice(self, worker_id)


class Dice:
    """One worker's draws: one per attempt, in the order of its attempts."""

    def __init__(self, faults: Faults, worker_id: str) -> None:
        self.faults = faults
        # A string seed is hashed by random (SHA-512), not by hash(): stable across runs.
        self.rng = (
            random.Random(f"{faults.seed}:{worker_id}")
            if faults.seed is not None
            else (random.Random())
        )
        self._poison = re.compile(faults.poison) if faults.poison else None
        self._crash_on = re.compile(faults.crash_on) if faults.crash_on else None

    def poisoned(self, product: str) -> bool:
        return self._poison is not None and self._poison.search(product) is not None

    def crashes_on(self, product: str) -> bool:
        """Whether this order kills its worker on every attempt (the crash loop)."""
        return self._crash_on is not None and self._crash_on.search(product) is not None

    def roll(self) -> Fault | None:
        """This attempt's fault, if any. Always two draws, so that one setting does not shift
        the other's sequence."""
        draw, at = self.rng.random(), self.rng.uniform(0.1, 0.9)
        if draw < self.faults.crash_rate:
            return Fault(FaultKind.CRASH, at)
        if draw < self.faults.crash_rate + self.faults.fail_rate:
            return Fault(FaultKind.FAIL, at)
        return None
