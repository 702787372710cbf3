"""The commands a person types: status, reset, and a clear error when the port is taken."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from typer.testing import CliRunner

from mqlab.faces.cli import app
from mqlab.lab.supervisor import Supervisor
from mqlab.protocol import keys, messages
from mqlab.settings import Settings
from mqlab.system.redis_clients import redact
from mqlab.system.spec import WorkerSpec
from tests.helpers import eventually, post_order


def run(settings: Settings, *args: str, columns: int = 160) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "DATABASE_URL": settings.database_url,
            "COLUMNS": str(columns),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "mqlab", *args], capture_output=True, text=True, env=env, timeout=60
    )


@pytest.mark.slow
def test_status_shows_queue_workers_and_counts(
    settings: Settings, sup: Supervisor, client: httpx.Client
) -> None:
    for i in range(3):
        post_order(client, f"Item{i}")
    sup.start_worker(WorkerSpec(worker_id="w7", job_seconds=30))
    eventually(lambda: client.get("/stats").json()["jobs"]["processing"] == 1)
    out = run(settings, "status")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "orders:queue" in text
    assert "w7" in text
    assert "busy" in text
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    ]
    assert ["2", "1", "0", "1"] in rows  # waiting, in flight, dead letters, workers
    assert ["2", "1", "0", "0", "0"] in rows  # orders: pending, processing, completed, ...
    assert "pending" in text
    assert "processing" in text
    # Its 30 s job would hold the supervisor's graceful close for its whole 10 s grace: a
    # crash ends it at once, and the clean fixture empties what it leaves behind.
    sup.kill("w7")


def test_status_lists_the_latest_dead_letters_with_their_reasons_in_80_columns(
    settings: Settings, clean: None
) -> None:
    now = time.time()
    raw = redis.Redis.from_url(settings.redis_url)
    try:
        raw.lpush(
            keys.DEAD,
            messages.dead_letter(
                b'{"jobId": 7}', "jobId missing or not a string", "w1", now - 7250
            ),
            b"\xff\xfe [/] pushed by hand",  # neither JSON nor UTF-8, with markup in it
            messages.dead_letter(
                b'\xff\xfe{"x":1}' + b"y" * 5000,
                "not UTF-8 (byte 0xff at 0) " + "[/] [bold]" * 50,
                "a-worker-with-a-long-name",
                now - 300,
            ),
        )
    finally:
        raw.close()
    out = run(settings, "status", columns=80)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert max(len(line) for line in text.splitlines()) <= 80, text
    assert "latest dead letters (3 of 3" in text
    table = text[text.index("latest dead letters") :]
    # A row goes on over the lines where a cell folded (its "when" cell is blank there).
    cells: list[list[str]] = []
    for line in table.splitlines():
        if line.startswith("│"):
            parts = [c.strip() for c in line.split("│")[1:-1]]
            if parts[0]:
                cells.append(parts)
            else:
                cells[-1] = [a + b for a, b in zip(cells[-1], parts, strict=True)]
    rows = [" ".join(row) for row in cells]
    assert len(rows) == 3, text
    newest, by_hand, oldest = rows
    assert "5m ago" in newest and "not UTF-8" in newest
    assert cells[0][1] == "a-worker-with-a-long-name"  # whole, folded
    assert r'\xff\xfe{"x":1}yy' in newest
    assert "?" in by_hand and "not an mqlab dead letter" in by_hand
    assert r"\xff\xfe [/]" in by_hand
    assert "2h ago" in oldest and "w1" in oldest and "jobId missing" in oldest
    assert '{"jobId": 7}' in oldest


@pytest.mark.slow
@pytest.mark.parametrize("value", ["inf", "nan", "-1", "1e9"])
def test_worker_refuses_a_job_time_that_is_not_a_sane_number_of_seconds(
    settings: Settings, value: str
) -> None:
    out = run(settings, "worker", f"--job-seconds={value}")
    assert out.returncode == 2
    assert "--job-seconds" in out.stderr
    assert "must be a number of seconds from 0 to 86400" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_reset_empties_everything(
    settings: Settings, client: httpx.Client, pg: psycopg.Connection
) -> None:
    post_order(client)
    out = run(settings, "reset", "--yes")
    assert out.returncode == 0, out.stderr
    row = pg.execute("SELECT count(*) FROM orders").fetchone()
    assert row == (0,)
    assert client.get("/stats").json()["queueDepth"] == 0


def test_api_refuses_a_taken_port_clearly(settings: Settings) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = run(settings, "api", "--port", str(port))
    assert out.returncode == 1
    assert f"port {port}" in out.stderr
    assert "taken" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_worker_rejects_an_unknown_work_kind(settings: Settings) -> None:
    out = run(settings, "worker", "--work", "dance")
    assert out.returncode == 1
    assert "--work must be one of sleep, cpu" in out.stderr


def at_80_columns(*args: str, home: Path | None = None) -> subprocess.CompletedProcess:
    """`mqlab ARGS` as in an 80-column terminal, on no configured servers (and, given a home,
    on that one's embedded servers)."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    env["COLUMNS"] = "80"
    if home is not None:
        env["MQLAB_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "mqlab", *args], capture_output=True, text=True, env=env, timeout=90
    )


COMMANDS = [
    (), ("api",), ("worker",), ("status",), ("reconcile",), ("run-experiment",), ("reset",),
    ("tui",),
    ("bench",), ("services",), ("services", "up"), ("services", "down"),
    ("services", "status"), ("services", "env"), ("dead",), ("dead", "list"),
    ("dead", "show"), ("dead", "replay"), ("dead", "purge"),
    ("link",),
]  # fmt: skip


def help_at_80_columns(*args: str) -> str:
    """The help as an 80-column terminal shows it (in process: click reads COLUMNS)."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "80"}, prog_name="mqlab")
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "mqlab")
def test_help_fits_80_columns_without_type_names(command: tuple[str, ...]) -> None:
    text = help_at_80_columns(*command, "-h")
    assert text == help_at_80_columns(*command, "--help") and text.startswith("Usage: mqlab")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    # Typer's bare types (<str>, <int range>, <bool>, <list[str]>) and click's (INTEGER).
    assert not re.search(r"<[a-z]|\b(TEXT|INTEGER|FLOAT|BOOLEAN|PATH)\b", text), text
    # Each option's description starts within the left half, so that it reads as prose.
    for line in lines:
        if re.match(r"  -", line):
            _, _, description = line.strip().partition("  ")
            assert description == "" or line.index(description.strip()) <= 40, line
    # A command's one-line summary in a list is not cut short with "...".
    commands = [line for line in lines if re.match(r"  [a-z][\w-]*  +\S", line)]
    assert not any(line.endswith("...") for line in commands), text


@pytest.mark.slow
def test_version() -> None:
    out = at_80_columns("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"mqlab {version('mqlab')}\n"


@pytest.mark.slow
def test_services_urls_are_never_split_at_80_columns(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """URLs printed by `services up` and `status` at 80 columns are whole, each on one line.

    Slow by design (about 8 s): the real CLI four times on a home of its own, whose servers
    it starts and stops."""
    home = tmp_path_factory.mktemp("home")
    up = at_80_columns("services", "up", home=home)
    try:
        assert up.returncode == 0, up.stderr
        status = at_80_columns("services", "status", home=home)
        env = at_80_columns("services", "env", home=home)
    finally:
        at_80_columns("services", "down", home=home)
    assert status.returncode == 0 and env.returncode == 0, status.stderr + env.stderr
    tcp_urls = re.findall(r"export \w+=(\S+)", env.stdout)
    assert len(tcp_urls) == 2
    for shown in (up.stdout, status.stdout):
        lines = shown.splitlines()
        urls = [m for line in lines for m in re.findall(r"\b[a-z]+://\S+", line)]
        assert len(urls) == 4, shown  # each server's unix socket URL and TCP URL
        for url in tcp_urls:
            assert redact(url) in urls, shown  # whole, on one line
        # Where a line is longer than the terminal, it is a URL alone (the terminal wraps
        # it softly; copied, it is one line again).
        assert all(len(line) <= 80 or line.strip() in urls for line in lines), shown


def test_status_never_cuts_an_id_at_80_columns() -> None:
    """`mqlab status` cut the current job id ("job-4-17963300553…") at 80 columns."""
    import io
    import time

    from rich.console import Console

    from mqlab.faces.status_view import render
    from mqlab.system.observe import Snapshot, WorkerInfo

    now = time.time()
    job = "job-4-1796330055312"
    workers = [
        WorkerInfo("w1", 123456, "h", "busy", job, now - 1.2, 12, now - 100, now - 0.3, 1),
        WorkerInfo("mqlab-ci-runner-1234567", 23456, "h", "idle", "", 0, 3, now - 100, now, 0),
    ]
    snap = Snapshot(now, 3, 1, 0, workers, {"pending": 3, "processing": 1, "completed": 10})
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(render(snap, [], 80))
    assert isinstance(console.file, io.StringIO)
    out = console.file.getvalue()
    assert max(len(line) for line in out.splitlines()) <= 80
    assert job in out  # on one line, whole
    folded = "".join(line.split("│")[1].strip() for line in out.splitlines() if "│" in line)
    assert "mqlab-ci-runner-1234567" in folded  # folded onto lines of its own, not cut


@pytest.mark.parametrize(
    "state, version", [("running", "Valkey 9.1.2"), ("stale", ""), ("stopped", "")]
)
def test_services_status_names_each_server_one_way_in_every_state(state: str, version: str) -> None:
    """It said "valkey / postgresql" when running, "postgres" when stale, "redis / postgres"
    after `down`."""
    import io

    from rich.console import Console

    from mqlab.lab.services.manager import ServiceInfo
    from mqlab.lab.services.view import services_table

    pg_version = "PostgreSQL 18.1" if version else ""
    infos = [
        ServiceInfo("redis", state, version=version),
        ServiceInfo("postgres", state, version=pg_version),
    ]
    console = Console(file=io.StringIO(), width=80, color_system=None)
    console.print(services_table(infos))
    assert isinstance(console.file, io.StringIO)
    names = [
        line.split("│")[1].strip()
        for line in console.file.getvalue().splitlines()
        if line.startswith("│")
    ]
    assert names == ["valkey", "postgresql"]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "mqlab")
def test_help_says_defaults_one_way_and_names_valkey(command: tuple[str, ...]) -> None:
    """Defaults were written three ways ("[env MQLAB_MAX_ATTEMPTS; default 5]", "[default:
    0.0]", "(default: embedded)"), and the embedded server was called Redis."""
    text = " ".join(help_at_80_columns(*command, "-h").split())
    assert not re.search(r"\(default[: ]|\[env [A-Z]|; default [^:]", text), text
    assert "embedded Redis" not in text, text


def test_run_experiment_help_lists_the_suites() -> None:
    from mqlab.experiments import available

    text = " ".join(help_at_80_columns("run-experiment", "-h").split())
    assert {"kata3", "kata4", "scaling"} <= set(available())
    for name in available():
        assert name in text, (name, text)
