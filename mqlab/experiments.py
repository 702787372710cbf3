"""Experiments are data: `experiments/*.toml`, loaded and validated here."""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mqlab.system.spec import LONG_PREFIX, SpecError, WorkerSpec, kinds
from mqlab.system.spec import options as spec_options

#: Products of a faulty row's orders: plain ones, the poison ones and the crash-loop ones.
PLAIN_PRODUCT = "order #"
POISON_PRODUCT = "poison #"
CRASH_PRODUCT = "crash #"
#: The product of a row's long orders (they work the row's long_seconds).
LONG_PRODUCT = f"{LONG_PREFIX} #"
#: What a crash-loop row's workers crash on when the row names no pattern.
DEFAULT_CRASH_ON = "^crash"

#: When a row gives no tolerance: this much over the expected time still passes ...
DEFAULT_TOLERANCE_SECONDS = 0.05
#: ... or this fraction of it, whichever is larger.
DEFAULT_TOLERANCE_FRACTION = 0.01


def ideal_seconds(orders: int, workers: int, job_seconds: float) -> float:
    """The makespan with zero overhead: ceil(N / W) waves of T seconds."""
    if orders <= 0:
        return 0.0
    if workers <= 0:
        raise ValueError("workers must be at least 1")
    return math.ceil(orders / workers) * job_seconds


class ExperimentError(ValueError):
    """A suite file that cannot be run; the message says where and what."""


@dataclass(frozen=True)
class Row:
    """One line of an experiment table: its orders, its workers (each as `spec` says) and,
    for Kata 4, what the lab does while it runs. A suite's row keys are these fields' names
    and the spec's (Row.make sorts them)."""

    name: str
    orders: int
    workers: int
    spec: WorkerSpec = field(default_factory=WorkerSpec)
    expected_seconds: float | None = None
    tolerance_seconds: float | None = None
    # -- Kata 4: failures on purpose, and what the lab does to the system while a row runs.
    poison_orders: int = 0  # that many orders get a product containing "poison"
    crash_orders: int = 0  # that many orders get a product matching crash_on
    long_orders: int = 0  # that many orders work the spec's long_seconds (the prefetch trap)
    kill_every: float | None = None  # SIGKILL a random worker this often, and replace it
    flushall_after: float | None = None  # FLUSHALL this long after the first order
    pg_stop_after: float | None = None  # stop PostgreSQL this long after the first order ...
    pg_stop_seconds: float = 3.0  # ... for this long
    fire_seconds: float | None = None  # pace the orders over this long (not one burst)
    # A drain: every order queued before the workers start; timed from when they get the queue.
    prefill: bool = False
    replay_without_poison: bool = False
    restart_crashed: bool = False
    expect_loss: bool = False
    timeout_seconds: float | None = None
    # -- Several hosts (a suite with a [hosts] table): each host's link, and what is done to
    # the links and the servers while the row runs.
    link_delay_ms: float = 0.0  # added by every worker and API host's link, each way ...
    link_jitter_ms: float = 0.0  # ... give or take this much
    partition_host: str = ""  # cut this host off from Valkey and PostgreSQL ...
    partition_after: float | None = None  # ... this long after the first order ...
    partition_seconds: float = 10.0  # ... for this long, then heal its link
    failover_after: float | None = None  # SIGKILL the Valkey primary this long after ...
    failover_lag_seconds: float = 0.0  # ... its replica cut off from it this long first

    @classmethod
    def make(cls, **keys: Any) -> Row:
        """A row from its keys as a suite names them: WorkerSpec's go to its spec (raising
        SpecError when they cannot run), the others are the row's."""
        spec = {k: keys.pop(k) for k in SPEC_KEYS & set(keys)}
        if keys.get("crash_orders") and not spec.get("crash_on"):
            spec["crash_on"] = DEFAULT_CRASH_ON
        return cls(spec=WorkerSpec(**spec), **keys)

    @property
    def faulty(self) -> bool:
        """A Kata 4 row: judged by its ledger (nothing lost, nothing twice), not by a time."""
        spec = self.spec
        return any((
            spec.fail_rate, spec.crash_rate, self.poison_orders, self.crash_orders,
            spec.fetch != "reliable", self.kill_every, self.flushall_after,
            self.pg_stop_after is not None, self.restart_crashed, self.expect_loss,
            spec.max_attempts, self.fire_seconds, self.partition_after is not None,
            self.failover_after is not None,
        ))  # fmt: skip

    @property
    def expects_refusals(self) -> bool:
        """A row that takes a backend away (PostgreSQL stopped, Valkey's primary killed)
        expects 503s while it is away: its ledger judges its answers, not the API's bar."""
        return self.pg_stop_after is not None or self.failover_after is not None

    @property
    def timeout(self) -> float:
        """Seconds to wait for its last job: its own bound, or the serial time plus a wide
        margin (wider for a faulty row: backoffs and recoveries)."""
        if self.timeout_seconds:
            return self.timeout_seconds
        return self.orders * self.spec.job_seconds * 1.5 + (60 if self.faulty else 30)

    @property
    def plain_orders(self) -> int:
        return self.orders - self.poison_orders - self.crash_orders - self.long_orders

    def products(self, plain: str) -> list[tuple[int, str]]:
        """(count, product) of the row's orders, the plain ones named `plain`."""
        return [
            (self.long_orders, LONG_PRODUCT),
            (self.plain_orders, plain),
            (self.poison_orders, POISON_PRODUCT),
            (self.crash_orders, CRASH_PRODUCT),
        ]

    @property
    def ideal_seconds(self) -> float:
        """ceil(N / slots) waves of T, a slot being one of a worker's --concurrency jobs when
        they sleep; CPU-bound, a process works one job at a time whatever its slots (one
        interpreter runs Python on one core at a time)."""
        return ideal_seconds(self.orders, self.slots, self.spec.job_seconds)

    @property
    def slots(self) -> int:
        """Jobs its workers can work at once: a worker's --concurrency counts for sleep-bound
        work only (one interpreter runs Python on one core at a time)."""
        spec = self.spec
        return self.workers * (spec.concurrency if spec.work == "sleep" else 1)

    @property
    def setup(self) -> tuple[Any, ...]:
        """What a row's speedup is measured against: the 1-worker, 1-slot row of the same
        orders and jobs (the same batches, drain or not, long orders)."""
        spec = self.spec
        return (self.orders, spec.job_seconds, spec.work, spec.batch, self.prefill,
                self.long_orders, spec.long_seconds)  # fmt: skip

    @property
    def tolerance(self) -> float:
        if self.tolerance_seconds is not None:
            return self.tolerance_seconds
        base = self.expected_seconds or 0.0
        return max(DEFAULT_TOLERANCE_SECONDS, DEFAULT_TOLERANCE_FRACTION * base)

    def with_job_seconds(self, seconds: float, tolerance: float | None = None) -> Row:
        """The same row at another job time; the expected time scales with it, and the
        tolerance becomes `tolerance` when given (the fixed costs it allows for do not)."""
        if seconds == self.spec.job_seconds:
            return self
        expected = self.expected_seconds
        if expected is not None and self.spec.job_seconds > 0:
            expected = expected * seconds / self.spec.job_seconds
        tolerance = self.tolerance_seconds if tolerance is None else tolerance
        spec = replace(self.spec, job_seconds=seconds)
        return replace(self, spec=spec, expected_seconds=expected, tolerance_seconds=tolerance)


@dataclass(frozen=True)
class ApiExpectation:
    """The kata's fourth row: the API answers at once with 202.

    "At once" is judged by the slowest answer: under this bar, and under the job time where
    a job is shorter (the answer must not wait for the work). The median is reported, not
    judged here: it is a speed target, measured by `mqlab bench`.
    """

    max_latency_ms: float = 50.0
    #: Also under the shortest job time (of jobs that work at all). Off for suites that fire
    #: hundreds of orders at once at short jobs: their bar is max_latency_ms alone.
    under_job_time: bool = True


#: A lab host's name: what its processes report as their host (MQLAB_HOST).
HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,15}")


@dataclass(frozen=True)
class Hosts:
    """A suite's [hosts] table: the lab hosts (network namespaces) its APIs and its workers
    run on; the servers run on the lab's own side of the bridge."""

    api: tuple[str, ...] = ("hosta", "hostb")
    workers: tuple[str, ...] = ("hosta", "hostb", "hostc")

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.api + self.workers))


@dataclass(frozen=True)
class Suite:
    name: str
    title: str
    description: str
    rows: tuple[Row, ...]
    api: ApiExpectation
    path: Path | None = None
    #: Where its APIs and workers run (None: on this machine, as every other suite).
    hosts: Hosts | None = None
    #: Each row's tolerance when the suite runs at another job time (--job-seconds).
    scaled_tolerance_seconds: float | None = None

    def api_bar_ms(self) -> float:
        """Every answer must come faster than this: the suite's bar, or the shortest job
        (a job of 0 s has no work for an answer to wait for: it sets no bar)."""
        jobs = [r.spec.job_seconds * 1000 for r in self.rows if r.spec.job_seconds > 0]
        if not self.api.under_job_time or not jobs:
            return self.api.max_latency_ms
        return min(self.api.max_latency_ms, *jobs)

    def with_job_seconds(self, seconds: float) -> Suite:
        tolerance = self.scaled_tolerance_seconds
        return replace(self, rows=tuple(r.with_job_seconds(seconds, tolerance) for r in self.rows))


def experiments_dir() -> Path:
    """experiments/ of the checkout (or of the working directory for an installed mqlab)."""
    checkout = Path(__file__).resolve().parent.parent / "experiments"
    return checkout if checkout.is_dir() else Path.cwd() / "experiments"


def available() -> list[str]:
    return sorted(p.stem for p in experiments_dir().glob("*.toml"))


def find(name_or_path: str) -> Path:
    """A suite name (kata3) or a path to a .toml file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.exists():
            raise ExperimentError(f"{path}: no such file")
        return path
    candidate = experiments_dir() / f"{name_or_path}.toml"
    if not candidate.exists():
        names = ", ".join(available()) or "none"
        raise ExperimentError(f"no suite named {name_or_path!r} (available: {names})")
    return candidate


def load(name_or_path: str) -> Suite:
    """Read and validate a suite; ExperimentError says what is wrong and where."""
    path = find(name_or_path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ExperimentError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, path)


_KIND_NAMES: dict[type | tuple[type, ...], str] = {
    int: "a whole number",
    (int, float): "a number",
    str: "a string",
}


def _get(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ExperimentError(f"{where}: {key} must be {_KIND_NAMES[kind]}, not {value!r}")
    return value


def parse(data: dict[str, Any], path: Path | None = None) -> Suite:
    where = str(path) if path else "suite"
    unknown = set(data) - {"suite", "api", "row", "hosts"}
    if unknown:
        raise ExperimentError(f"{where}: unknown table(s) {sorted(unknown)}")
    head = data.get("suite", {})
    name = _get(head, "name", str, f"{where} [suite]") or (path.stem if path else "suite")
    default_t = _get(head, "job_seconds", (int, float), f"{where} [suite]")
    default_t = 2.0 if default_t is None else float(default_t)
    default_work = _get(head, "work", str, f"{where} [suite]") or "sleep"
    scaled = _get(head, "scaled_tolerance_seconds", (int, float), f"{where} [suite]")
    if scaled is not None and scaled < 0:
        raise ExperimentError(f"{where} [suite]: scaled_tolerance_seconds must be >= 0")
    api_table = data.get("api", {})
    allowed = ["max_latency_ms", "under_job_time"]
    unknown = set(api_table) - set(allowed)
    if unknown:
        moved = " (the burst's median is a speed target: `mqlab bench` reports it)"
        raise ExperimentError(
            f"{where} [api]: unknown key(s) {sorted(unknown)}; allowed: {allowed}"
            + (moved if "p50_latency_ms" in unknown else "")
        )
    under = api_table.get("under_job_time")
    if under is not None and not isinstance(under, bool):
        raise ExperimentError(f"{where} [api]: under_job_time must be true or false, not {under!r}")
    api = ApiExpectation(
        max_latency_ms=float(_get(api_table, "max_latency_ms", (int, float), where) or 50.0),
        under_job_time=True if under is None else under,
    )
    raw_rows = data.get("row")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise ExperimentError(f"{where}: no [[row]] tables: a suite needs at least one row")
    rows = tuple(_row(raw, i, where, default_t, default_work) for i, raw in enumerate(raw_rows, 1))
    names = [r.name for r in rows]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ExperimentError(f"{where}: row names must be unique: {duplicates}")
    hosts = _hosts(data["hosts"], where) if "hosts" in data else None
    for index, row in enumerate(rows, 1):
        _checked_on_hosts(row, hosts, f"{where} row {index}")
    return Suite(
        name=name,
        title=_get(head, "title", str, where) or name,
        description=_get(head, "description", str, where) or "",
        rows=rows,
        api=api,
        path=path,
        scaled_tolerance_seconds=None if scaled is None else float(scaled),
        hosts=hosts,
    )


def _hosts(table: Any, where: str) -> Hosts:
    """A [hosts] table: `api` and `workers`, lists of host names."""
    at = f"{where} [hosts]"
    if not isinstance(table, dict):
        raise ExperimentError(f"{at}: must be a table")
    unknown = set(table) - {"api", "workers"}
    if unknown:
        raise ExperimentError(f"{at}: unknown key(s) {sorted(unknown)}; allowed: api, workers")
    got = {}
    for key in ("api", "workers"):
        names = table.get(key, list(getattr(Hosts(), key)))
        if not isinstance(names, list) or not names or not 1 <= len(names) <= 8:
            raise ExperimentError(f"{at}: {key} must be a list of 1 to 8 host names")
        for name in names:
            if not isinstance(name, str) or not HOST_NAME.fullmatch(name):
                raise ExperimentError(
                    f"{at}: {name!r} is not a host name (a lowercase letter, then up to 15 "
                    "lowercase letters or digits)"
                )
        if len(set(names)) != len(names):
            raise ExperimentError(f"{at}: {key} names a host twice")
        got[key] = tuple(names)
    return Hosts(**got)


def _checked_on_hosts(row: Row, hosts: Hosts | None, at: str) -> None:
    """The keys of several hosts need a [hosts] table, and a partition a host of its workers."""
    keys = {
        "link_delay_ms": row.link_delay_ms, "link_jitter_ms": row.link_jitter_ms,
        "partition_after": row.partition_after, "failover_after": row.failover_after,
        "partition_host": row.partition_host, "failover_lag_seconds": row.failover_lag_seconds,
    }  # fmt: skip
    used = sorted(k for k, v in keys.items() if v)
    if hosts is None:
        if used:
            raise ExperimentError(f"{at}: {', '.join(used)} need a [hosts] table in the suite")
        return
    if (row.partition_after is None) != (not row.partition_host):
        raise ExperimentError(f"{at}: partition_after and partition_host go together")
    if row.partition_host and row.partition_host not in hosts.workers:
        raise ExperimentError(
            f"{at}: partition_host {row.partition_host!r} is not one of the workers' hosts "
            f"({', '.join(hosts.workers)})"
        )
    if row.failover_lag_seconds and row.failover_after is None:
        raise ExperimentError(f"{at}: failover_lag_seconds needs failover_after")
    if row.link_jitter_ms > row.link_delay_ms:
        raise ExperimentError(f"{at}: link_jitter_ms cannot exceed link_delay_ms")


#: A row's keys: its workers' options (WorkerSpec's fields a row may set) and its own fields.
SPEC_KEYS = frozenset(f.name for f in spec_options() if f.metadata["flag"].row)
ROW_KEYS = SPEC_KEYS | {f.name for f in dataclasses.fields(Row) if f.name != "spec"}
#: The rest of a row's keys by the kind of their value, checked alone (numbers >= 0, ...).
_KINDS = {k: v for k, v in {**kinds(WorkerSpec), **kinds(Row)}.items() if k in ROW_KEYS}
#: The keys _row checks itself (their bounds are the lab's, or a suite gives their default).
_CHECKED = {"name", "orders", "workers", "job_seconds", "work"}


def _row(raw: dict[str, Any], index: int, where: str, default_t: float, default_work: str) -> Row:
    at = f"{where} row {index}"
    unknown = set(raw) - ROW_KEYS
    if unknown:
        raise ExperimentError(
            f"{at}: unknown key(s) {sorted(unknown)}; allowed: {sorted(ROW_KEYS)}"
        )
    orders = _get(raw, "orders", int, at)
    workers = _get(raw, "workers", int, at)
    if orders is None or orders < 1:
        raise ExperimentError(f"{at}: orders must be a whole number >= 1")
    if workers is None or not 1 <= workers <= 64:
        raise ExperimentError(f"{at}: workers must be a whole number from 1 to 64")
    job_seconds = _get(raw, "job_seconds", (int, float), at)
    job_seconds = default_t if job_seconds is None else float(job_seconds)
    if not 0 <= job_seconds <= 600:
        raise ExperimentError(f"{at}: job_seconds must be within 0..600")
    keys = {
        "name": _get(raw, "name", str, at) or f"{orders} orders, {workers} workers",
        "orders": orders,
        "workers": workers,
        "job_seconds": job_seconds,
        "work": _get(raw, "work", str, at) or default_work,
    }
    for key in sorted(set(raw) - _CHECKED):
        keys[key] = _value(raw, key, at)
    try:
        row = Row.make(**keys)
    except SpecError as exc:
        # The spec's text names the worker's flags; the suite's keys are what the person wrote.
        message = re.sub(r"--([a-z-]+)", lambda m: m[1].replace("-", "_"), str(exc))
        raise ExperimentError(f"{at}: {message}") from None
    return _checked_together(row, at)


def _value(raw: dict[str, Any], key: str, at: str) -> Any:
    """One key's value, checked alone by its kind: numbers and whole numbers >= 0, flags."""
    kind = _KINDS[key]
    if kind is bool:
        if not isinstance(raw[key], bool):
            raise ExperimentError(f"{at}: {key} must be true or false, not {raw[key]!r}")
        return raw[key]
    if kind is str:
        return _get(raw, key, str, at)
    value = _get(raw, key, (int, float) if kind is float else kind, at)
    if value < 0:
        whole = " a whole number" if kind is int else ""
        raise ExperimentError(f"{at}: {key} must be{whole} >= 0, not {value!r}")
    return float(value) if kind is float else value


def _checked_together(row: Row, at: str) -> Row:
    """A row's keys that must agree with each other (the spec checked its own)."""
    if row.prefill and row.faulty:
        raise ExperimentError(f"{at}: prefill (a drain) is for rows without faults")
    if row.long_orders and not row.spec.long_seconds:
        raise ExperimentError(f"{at}: long_orders needs long_seconds > 0")
    if row.poison_orders + row.crash_orders + row.long_orders > row.orders:
        raise ExperimentError(
            f"{at}: poison_orders + crash_orders ({row.poison_orders + row.crash_orders}) "
            f"cannot exceed orders ({row.orders})"
        )
    if row.replay_without_poison and not row.poison_orders:
        raise ExperimentError(f"{at}: replay_without_poison needs poison_orders > 0")
    if row.kill_every is not None and row.kill_every <= 0:
        raise ExperimentError(f"{at}: kill_every must be > 0 seconds")
    if row.expect_loss and row.spec.fetch != "blpop":
        raise ExperimentError(
            f'{at}: expect_loss is for fetch = "blpop" (the reliable fetch loses nothing)'
        )
    return row
