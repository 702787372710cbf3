"""Fixtures: real Redis and PostgreSQL (embedded by default, or REDIS_URL / DATABASE_URL)."""

from __future__ import annotations

import compileall
import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

import mqlab
from mqlab.db import apply_schema, reset_data
from mqlab.lab.environment import Servers
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.supervisor import Supervisor
from mqlab.procs import free_port, pid_alive, terminate
from mqlab.protocol import keys
from mqlab.protocol.scans import live_worker_ids_sync
from mqlab.settings import Settings
from mqlab.system.resetting import reset_all


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """How many test processes `-n auto` (pyproject's addopts) starts.

    The whole suite: four, each with embedded servers of its own. It mostly waits (on workers'
    jobs, servers' starts and stops), so on a 2-core machine four took 144-153 s where two
    took 211 s. The inner loop (`-m "not slow"`): two. Its tests are short, and a test
    process's own start (plugins, collection, servers: about 6 s of CPU) costs more than its
    waits save: 19 s with two, 28 s with four. None (0: one process) when REDIS_URL /
    DATABASE_URL name servers: the tests empty their tables and keys, and two processes
    sharing one database would empty each other's.
    """
    if os.environ.get("REDIS_URL") or os.environ.get("DATABASE_URL"):
        return 0
    return 2 if "not slow" in (config.getoption("markexpr") or "") else 4


#: How long each test file took (seconds), written by `pytest --store-file-seconds`. The files
#: are handed to the test processes longest first (`--dist loadfile --no-loadscope-reorder`
#: in pyproject.toml), so that no long file starts last and holds up the end of the run: in
#: xdist's own order (most tests first) a 20 s file came last and the suite took 161-167 s
#: here, longest first 144 s. A file it does not name yet goes first (it may be long).
FILE_SECONDS = Path(__file__).with_name("file_seconds.json")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--store-file-seconds",
        action="store_true",
        help=f"write how long each test file took to {FILE_SECONDS.name} (run the whole suite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Compile mqlab once, in the run's first process, for the hundreds of worker, API and CLI
    processes the tests start: where PYTHONDONTWRITEBYTECODE is set (these machines set it),
    each of them compiled mqlab's modules again (about 0.04 s of CPU a process)."""
    if not hasattr(config, "workerinput"):  # the controller, not an xdist worker
        compileall.compile_dir(Path(mqlab.__file__).parent, quiet=1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `servers` every test that uses the run's Redis and PostgreSQL (the `settings`
    fixture, directly or through another): the ones worth a pass against other servers.
    Then order the files longest first (FILE_SECONDS); a file's tests keep their order."""
    for item in items:
        if "settings" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.servers)
    seconds: dict[str, float] = json.loads(FILE_SECONDS.read_text())
    items.sort(key=lambda item: -seconds.get(_file_of(item), math.inf))


def _file_of(item: pytest.Item | pytest.TestReport) -> str:
    return item.nodeid.split("::", 1)[0]


_took: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add up each file's time (setup, call and teardown), for --store-file-seconds."""
    file = _file_of(report)
    _took[file] = _took.get(file, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if session.config.getoption("--store-file-seconds") and not hasattr(
        session.config,
        "workerinput",  # an xdist test process: the controller writes
    ):
        took = {name: round(secs, 1) for name, secs in sorted(_took.items())}
        FILE_SECONDS.write_text(json.dumps(took, indent=1) + "\n")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """The backends of the whole run, found as every command finds them (environment.Servers).

    With REDIS_URL and DATABASE_URL set, those servers (CI's second pass points them at a
    Redis DB number and a PostgreSQL database of its own). Otherwise embedded servers in a
    temporary MQLAB_HOME, owned by this process: stopped at the end, and killed with it.
    """
    with Servers(base=short_tmp(tmp_path_factory, "svc")) as found:
        apply_schema(found.database_url)  # embedded ones have it; given ones may not yet
        yield found


def short_tmp(factory: pytest.TempPathFactory, name: str) -> Path:
    """A temp dir whose unix socket paths stay short enough."""
    return factory.mktemp(name, numbered=True)


@pytest.fixture(scope="session")
def rds(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def pg(settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        yield conn


def _clean(settings: Settings, rds: redis.Redis) -> None:
    reset_all(settings)
    stale = [keys.worker_key(wid) for wid in live_worker_ids_sync(rds)]
    if stale:
        rds.delete(*stale)


@pytest.fixture
def clean(settings: Settings, rds: redis.Redis) -> Iterator[None]:
    """Empty tables and queues before and after the test."""
    _clean(settings, rds)
    yield
    _clean(settings, rds)


@pytest.fixture(scope="session")
def api_sup(settings: Settings) -> Iterator[Supervisor]:
    """One API process for the session (its own supervisor, so tests' close() spare it)."""
    sup = Supervisor(settings)
    sup.start_api()
    yield sup
    sup.close()


@pytest.fixture
def api_url(api_sup: Supervisor, clean: None) -> str:
    assert api_sup.api_url is not None
    return api_sup.api_url


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as c:
        yield c


@pytest.fixture
def sup(settings: Settings, clean: None) -> Iterator[Supervisor]:
    """A supervisor for the workers a test starts; everything it started is stopped after."""
    s = Supervisor(settings)
    yield s
    s.close()
    assert not [c.name for c in s.children.values() if c.alive()]


def counts(pg: psycopg.Connection, rds: redis.Redis) -> dict[str, int]:
    """Rows and queue entries: what a rejected request must not leave behind."""
    orders = pg.execute("SELECT count(*) FROM orders").fetchone()
    jobs = pg.execute("SELECT count(*) FROM jobs").fetchone()
    return {
        "orders": orders[0] if orders else -1,
        "jobs": jobs[0] if jobs else -1,
        "queue": int(rds.llen(keys.QUEUE)),
    }


class StoppableServer:
    """A throwaway server of ours that a test can stop and start again on the same port."""

    def __init__(self, module: Any, base: Path) -> None:
        self.module, self.base, self.port = module, base, free_port()
        self.record: dict[str, Any] = {}
        # How `mqlab services down` stops it: SIGTERM is PostgreSQL's smart shutdown, which
        # waits for every client (an API's pool) to leave, and so always ran into
        # terminate()'s 10 s and a SIGKILL; SIGINT is its fast shutdown.
        self.stop_signal = signal.SIGINT if module is postgres_server else signal.SIGTERM

    def start(self) -> None:
        self.record = self.module.start(self.base, self.port, owned=True)

    def stop(self) -> None:
        terminate(self.record["pid"], self.stop_signal)

    def running(self) -> bool:
        return pid_alive(self.record.get("pid"))

    @property
    def url(self) -> str:
        return str(self.record["url"])


@pytest.fixture
def stoppable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoppableServer]:
    server = StoppableServer(valkey_server, tmp_path_factory.mktemp("r"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def _stoppable_pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoppableServer]:
    """One PostgreSQL for every test that takes one down: a cluster and its schema are made
    once, not per test."""
    server = StoppableServer(postgres_server, tmp_path_factory.mktemp("p"))
    server.start()
    apply_schema(server.url)
    yield server
    if server.running():
        server.stop()


@pytest.fixture
def stoppable_pg(_stoppable_pg_server: StoppableServer) -> StoppableServer:
    """The shared PostgreSQL above, running and empty (a test may have left it stopped)."""
    if not _stoppable_pg_server.running():
        _stoppable_pg_server.start()
    with psycopg.connect(_stoppable_pg_server.url, autocommit=True) as conn:
        reset_data(conn)
    return _stoppable_pg_server
