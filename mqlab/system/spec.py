"""What configures one worker: a frozen, validated WorkerSpec (in the manner of arq's
WorkerSettings), the one spelling of a worker's options.

Each field is one option: its name is a suite row's key (mqlab.experiments), with dashes
for underscores the `mqlab worker` flag (mqlab.faces.cli builds the command's options from
the fields), and its metadata says how the command's help describes it. The lab turns a spec
into a worker's flags (to_args); the worker reads it back from its parsed flags and the
environment (from_options). Adding an option is one field and its check in __post_init__.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mqlab.system.faults import DEFAULT_POISON, FaultError, Faults
from mqlab.system.retry_policy import (
    ENV_BACKOFF_BASE,
    ENV_BACKOFF_MAX,
    ENV_MAX_ATTEMPTS,
    PolicyError,
    RetryPolicy,
)
from mqlab.system.work import WORK_KINDS, check_job_seconds

#: How a worker takes a message. `reliable`: BLMOVE into its own processing list, acked only
#: once PostgreSQL has the outcome, and recovered by the reaper and the reconciler if it dies.
#: `blpop`: the kata's way, for comparison (Kata 4's lab): the pop removes the message, and a
#: worker that dies with it in hand loses it (its job stays `processing` for good). A blpop
#: worker reaps no one and does not reconcile: it is the lab's lesson, not a mode to run.
FETCH_KINDS = ("reliable", "blpop")

#: The most messages a worker takes at once by default (--batch), and at all.
DEFAULT_BATCH = 32
MAX_BATCH = 1000
#: A worker takes no more than it starts within this many seconds (at its --job-seconds): a
#: message it holds is one no other worker can start (the prefetch trap).
BATCH_HORIZON = 0.05

#: The product prefix of the lab's long orders (--long-seconds; a row's long_orders).
LONG_PREFIX = "long"

#: The most jobs one worker works at once (--concurrency): each waits in a BLMOVE of its own,
#: on a connection of its own.
MAX_SLOTS = 100

#: The retry policy when no option and no variable says otherwise.
DEFAULT_POLICY = RetryPolicy()


class SpecError(ValueError):
    """A worker configuration that cannot run; the text names the flag and the value."""


@dataclass(frozen=True)
class Flag:
    """How an option reads on `mqlab worker`'s command line and in its help."""

    metavar: str
    help: str
    #: The flag, when it is not the field's name with dashes.
    name: str = ""
    #: The environment variable read when the flag is not given, and the default it shows.
    env: str | None = None
    env_default: str = ""
    show_default: bool | str = True
    #: Whether a suite's [[row]] may set it (the lab names each worker itself).
    row: bool = True


def _option(default: Any, metavar: str, help: str, **flag: Any) -> Any:
    return field(default=default, metadata={"flag": Flag(metavar, help, **flag)})


@dataclass(frozen=True, kw_only=True)
class WorkerSpec:
    """One worker's configuration; `policy` and `faults` are built from its fields."""

    worker_id: str | None = _option(
        None, "ID", "Worker id.", name="--id", show_default="host-pid", row=False
    )
    job_seconds: float = _option(2.0, "SECONDS", "How long each job works (the kata: 2 s).")
    work: str = _option(
        "sleep", "KIND", "sleep (I/O-bound, as in the kata) or cpu (spins the CPU)."
    )
    # The policy: all three unset (None) leaves it to the environment, else it is whole.
    max_attempts: int | None = _option(
        None, "N", "Attempts a job gets before it is dead.",
        env=ENV_MAX_ATTEMPTS, env_default=str(DEFAULT_POLICY.max_attempts),
    )  # fmt: skip
    backoff_base: float | None = _option(
        None, "SECONDS", "The first retry's wait; each next one doubles, with jitter.",
        env=ENV_BACKOFF_BASE, env_default=f"{DEFAULT_POLICY.base:g}",
    )  # fmt: skip
    backoff_max: float | None = _option(
        None, "SECONDS", "The longest wait between attempts.",
        env=ENV_BACKOFF_MAX, env_default=f"{DEFAULT_POLICY.cap:g}",
    )  # fmt: skip
    fail_rate: float = _option(
        0.0, "P", "Each attempt fails part-way, transiently, with probability P (0-1)."
    )
    crash_rate: float = _option(
        0.0, "P", "Each attempt kills this worker part-way (os._exit) with probability P."
    )
    poison: str = _option(
        DEFAULT_POISON, "REGEX", "Orders whose product matches fail permanently ('' for none).",
        row=False,  # a suite's rows poison by their products (poison_orders)
    )  # fmt: skip
    crash_on: str = _option(
        "", "REGEX",
        "Orders whose product matches kill this worker on every attempt (a crash loop; '' for "
        "none).",
        show_default="'': none",
    )  # fmt: skip
    seed: int | None = _option(None, "N", "Seed the failures (and the jitter): reproducible runs.")
    fetch: str = _option(
        "reliable", "HOW",
        "reliable (BLMOVE into a processing list, recovered if this worker dies) or blpop (the "
        "kata's: a worker killed mid-job loses that job; for comparison).",
    )  # fmt: skip

    batch: int = _option(
        DEFAULT_BATCH, "K",
        "The most messages taken at once while the queue is deep (a fair share of it among "
        "the live workers, and no more than this worker starts within "
        f"{BATCH_HORIZON:g} s at its --job-seconds); 1: one at a time.",
    )  # fmt: skip
    long_seconds: float = _option(
        0.0, "SECONDS",
        f"Orders whose product starts with {LONG_PREFIX!r} (a suite row's long_orders) work "
        "this long instead of --job-seconds: a few long jobs among short ones.",
        show_default="0: none",
    )  # fmt: skip
    concurrency: int = _option(
        1, "N",
        "Jobs this worker works at once (asyncio), for sleep-bound work; CPU-bound work gains "
        "nothing (the process runs Python on one core at a time).",
    )  # fmt: skip

    #: The retry policy (None: the worker's environment's); the failures it injects.
    policy: RetryPolicy | None = field(init=False, repr=False, compare=False)
    faults: Faults = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            check_job_seconds(self.job_seconds)
        except ValueError as exc:
            raise SpecError(f"--job-seconds {exc}") from None
        if self.work not in WORK_KINDS:
            raise SpecError(f"--work must be one of {', '.join(WORK_KINDS)}, not {self.work!r}")
        if not 1 <= self.batch <= MAX_BATCH:
            raise SpecError(f"--batch must be 1 to {MAX_BATCH}, not {self.batch}")
        try:
            check_job_seconds(self.long_seconds)
        except ValueError as exc:
            raise SpecError(f"--long-seconds {exc}") from None
        if not 1 <= self.concurrency <= MAX_SLOTS:
            raise SpecError(f"--concurrency must be 1 to {MAX_SLOTS}, not {self.concurrency}")
        if self.fetch not in FETCH_KINDS:
            raise SpecError(f"--fetch must be one of {', '.join(FETCH_KINDS)}, not {self.fetch!r}")
        try:
            self._set("faults", Faults(self.fail_rate, self.crash_rate, self.poison, self.seed,
                                       self.crash_on))  # fmt: skip
            self._set("policy", self._policy())
        except (FaultError, PolicyError) as exc:
            raise SpecError(str(exc)) from None

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # frozen: only while it is being made

    def _policy(self) -> RetryPolicy | None:
        """The policy its three fields give, the unset ones filled (so a spec holds a policy
        whole, and its flags say all of it): the defaults, the cap at least the base."""
        if (self.max_attempts, self.backoff_base, self.backoff_max) == (None, None, None):
            return None
        base = DEFAULT_POLICY.base if self.backoff_base is None else self.backoff_base
        policy = RetryPolicy(
            max_attempts=(
                DEFAULT_POLICY.max_attempts if self.max_attempts is None else self.max_attempts
            ),
            base=base,
            cap=max(base, DEFAULT_POLICY.cap) if self.backoff_max is None else self.backoff_max,
        )
        self._set("max_attempts", policy.max_attempts)
        self._set("backoff_base", policy.base)
        self._set("backoff_max", policy.cap)
        return policy

    def most_taken(self, job_seconds: float | None = None) -> int:
        """The most messages this worker takes at once: --batch, cut so that it starts them
        all within BATCH_HORIZON at `job_seconds` (the worker's measured average; its
        --job-seconds by default); 1 for the kata's BLPOP (it has no processing list)."""
        if self.fetch != "reliable":
            return 1
        seconds = self.job_seconds if job_seconds is None else job_seconds
        if seconds <= 0:
            return self.batch
        return max(1, min(self.batch, int(BATCH_HORIZON / seconds)))

    def to_args(self) -> list[str]:
        """The `mqlab worker` flags that give a worker this spec: those of the options that
        differ from their defaults (a worker started without them follows its environment)."""
        args: list[str] = []
        for f in options():
            value = getattr(self, f.name)
            if value != f.default:
                args += [flag_of(f), repr(value) if isinstance(value, float) else str(value)]
        return args

    @classmethod
    def from_options(
        cls, values: Mapping[str, Any], environ: Mapping[str, str] | None = None
    ) -> WorkerSpec:
        """The spec of parsed `mqlab worker` options (field name -> value; None or absent: not
        given), an option with a variable taken from `environ` (os.environ) when not given."""
        env = os.environ if environ is None else environ
        given: dict[str, Any] = {}
        for f in options():
            value = values.get(f.name)
            variable = f.metadata["flag"].env
            if value is None and variable is not None and variable in env:
                value = _from_text(env[variable], kinds(cls)[f.name], variable)
            if value is not None:
                given[f.name] = value
        return cls(**given)


def options() -> tuple[dataclasses.Field[Any], ...]:
    """WorkerSpec's options, in the order of `mqlab worker --help`."""
    return tuple(f for f in dataclasses.fields(WorkerSpec) if "flag" in f.metadata)


def flag_of(f: dataclasses.Field[Any]) -> str:
    """An option's flag: --job-seconds for job_seconds (unless its metadata names another)."""
    return f.metadata["flag"].name or "--" + f.name.replace("_", "-")


def kinds(cls: type) -> dict[str, type]:
    """A dataclass's field name -> the type of its value when set (int for `int | None`)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if isinstance(hint, types.UnionType) else hint
    return out


def _from_text(text: str, kind: type, variable: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise SpecError(f"{variable} must be {what}, not {text!r}") from None
