"""The link (mqlab.lab.hosts.link): a real `mqlab link` process between redis-py and the real
Valkey, and between a socket and an echo server of the test's; its control socket; its CLI."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from mqlab.faces.cli import app
from mqlab.lab.hosts.link import LinkError, Route
from mqlab.lab.hosts.link_control import LinkControl, serve_control
from mqlab.private_files import UnsafePath
from mqlab.procs import free_port, pid_alive, spawn, terminate
from mqlab.settings import Settings


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture(scope="module")
def echo() -> Iterator[int]:
    """A plain TCP echo server on loopback: its port."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@dataclass
class Valkey:
    """The run's Valkey over TCP (what a link forwards to) and its credentials."""

    host: str
    port: int
    username: str | None
    password: str | None

    def client(self, port: int | None = None, host: str = "127.0.0.1") -> redis.Redis:
        """A client of the Valkey, or of the link on `port`; no retries: a cut is seen as it is."""
        return redis.Redis(
            host=host if port else self.host,
            port=port or self.port,
            username=self.username,
            password=self.password,
            socket_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )


@pytest.fixture(scope="module")
def valkey(settings: Settings) -> Valkey:
    with redis.Redis.from_url(settings.redis_url) as client:
        kwargs = client.connection_pool.connection_kwargs
        port = int(client.info("server")["tcp_port"])
    host = kwargs.get("host") if "path" not in kwargs else "127.0.0.1"
    return Valkey(host or "127.0.0.1", port, kwargs.get("username"), kwargs.get("password"))


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    control: LinkControl
    ready: str


def start_link(folder: Path, *routes: str) -> Running:
    """`mqlab link` as the lab starts it (procs.spawn, owned), once it says it is ready."""
    folder.mkdir(mode=0o700, exist_ok=True)
    control = folder / "link.sock"
    argv = [sys.executable, "-m", "mqlab", "link", "--control", str(control)]
    for route in routes:
        argv += ["--route", route]
    proc = spawn(argv, owned=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ready = proc.stdout.readline().decode()
    assert ready.startswith("link ready: "), ready + proc.stdout.read().decode()
    return Running(proc, LinkControl(control), ready)


def stop_link(running: Running) -> None:
    terminate(running.proc.pid)
    assert running.proc.wait(10) == 0
    assert running.proc.stdout is not None
    running.proc.stdout.close()


@dataclass
class Lab:
    link: Running
    redis_port: int
    echo_port: int


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, valkey: Valkey, echo: int) -> Iterator[Lab]:
    """One link with two routes: to the Valkey and to the echo server."""
    redis_port, echo_port = free_port(), free_port()
    running = start_link(
        tmp_path_factory.mktemp("link"),
        f"127.0.0.1:{redis_port}={valkey.host}:{valkey.port}",
        f"127.0.0.1:{echo_port}=127.0.0.1:{echo}",
    )
    yield Lab(running, redis_port, echo_port)
    stop_link(running)


@pytest.fixture
def link(lab: Lab) -> Iterator[Lab]:
    """The module's link, with no delay and healed before and after the test."""
    lab.link.control.set_delay(0)
    lab.link.control.heal()
    yield lab
    lab.link.control.set_delay(0)
    lab.link.control.heal()


def round_trip(client: redis.Redis) -> float:
    start = time.perf_counter()
    assert client.ping()
    return time.perf_counter() - start


def test_ping_goes_through_and_a_delay_adds_to_each_way(link: Lab, valkey: Valkey) -> None:
    with valkey.client(link.redis_port) as client:
        assert client.ping()
        before = link.link.control.stats()
        assert before["open"] >= 1 and before["bytes_up"] > 0 and before["bytes_down"] > 0
        assert link.link.control.set_delay(20)["delay_ms"] == 20
        took = sorted(round_trip(client) for _ in range(5))
    assert took[0] >= 0.036, took  # 20 ms each way
    assert took[2] < 0.5, took


def test_jitter_keeps_a_stream_whole_and_in_order(link: Lab) -> None:
    before = link.link.control.set_delay(3, jitter_ms=3)
    assert before["jitter_ms"] == 3
    sent = os.urandom(4 * 1024 * 1024)
    got = bytearray()
    with socket.create_connection(("127.0.0.1", link.echo_port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def send() -> None:
            # Many small writes: many chunks, each with a delay of its own.
            for at in range(0, len(sent), 4096):
                sock.sendall(sent[at : at + 4096])

        sender = threading.Thread(target=send)
        sender.start()
        while len(got) < len(sent):
            data = sock.recv(1 << 20)
            assert data, f"the link closed after {len(got)} bytes"
            got.extend(data)
        sender.join(10)
    assert bytes(got) == sent
    after = link.link.control.stats()
    assert after["bytes_up"] - before["bytes_up"] == len(sent)
    assert after["bytes_down"] - before["bytes_down"] == len(sent)


def test_a_cut_drops_what_the_delay_still_holds(link: Lab) -> None:
    link.link.control.set_delay(300)
    with socket.create_connection(("127.0.0.1", link.echo_port), timeout=5) as sock:
        sock.sendall(b"held")
        time.sleep(0.05)  # read by the link, not yet due
        assert link.link.control.cut()["open"] == 0
        got = b""
        with contextlib.suppress(ConnectionResetError):  # closed at once: a reset is an end too
            while data := sock.recv(4):
                got += data
    assert got == b""  # the held bytes never reached the echo server, nor came back


def test_cut_closes_refuses_and_heal_restores(link: Lab, valkey: Valkey) -> None:
    control = link.link.control
    with valkey.client(link.redis_port) as client:
        assert client.ping()
        cut = control.cut()
        assert cut["cut"] is True and cut["open"] == 0
        with pytest.raises(redis.ConnectionError):
            client.ping()  # the open connection was closed
        refused = control.stats()["refused"]
        with valkey.client(link.redis_port) as other, pytest.raises(redis.ConnectionError):
            other.ping()  # a new one is accepted and closed at once
        assert control.stats()["refused"] > refused
        healed = control.heal()
        assert healed["cut"] is False
        assert client.ping()  # it reconnects
        assert control.stats()["open"] >= 1


def ask_raw(path: Path, line: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(line)
        with sock.makefile("rb") as lines:
            return dict(json.loads(lines.readline()))


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"stats\n", "not JSON"),
        (b"[1]\n", "not a JSON object"),
        (b'{"op": "jump"}\n', "unknown op 'jump'"),
        (b'{"op": "set"}\n', "set needs delay_ms"),
        (b'{"op": "set", "delay_ms": -1}\n', "delay_ms must be from 0"),
        (b'{"op": "set", "delay_ms": 1, "jitter_ms": "2"}\n', "jitter_ms must be a number"),
        (b'{"op": "cut", "now": true}\n', "cut takes no now"),
    ],
)
def test_a_bad_request_is_answered_and_the_link_goes_on(
    link: Lab, valkey: Valkey, line: bytes, said: str
) -> None:
    answer = ask_raw(link.link.control.path, line)
    assert answer["ok"] is False and said in str(answer["error"]), answer
    with valkey.client(link.redis_port) as client:
        assert client.ping()
    assert link.link.control.stats()["delay_ms"] == 0


def test_link_control_raises_a_clear_error(link: Lab, tmp_path: Path) -> None:
    with pytest.raises(LinkError, match="refused set: delay_ms must be"):
        link.link.control.set_delay(-5)
    with pytest.raises(LinkError, match="did not answer stats"):
        LinkControl(tmp_path / "none.sock", timeout=1).stats()


@pytest.mark.parametrize(
    ("route", "said"),
    [
        ("127.0.0.1:6380", "is not LISTEN=UPSTREAM"),
        ("127.0.0.1=10.200.0.1:40000", "is not HOST:PORT"),
        ("127.0.0.1:0=10.200.0.1:40000", "not a number from 1 to 65535"),
        ("127.0.0.1:6380=10.200.0.1:65536", "not a number from 1 to 65535"),
        ("8.8.8.8:6380=10.200.0.1:40000", "neither a loopback nor a private address"),
        ("localhost:6380=10.200.0.1:40000", "is not an IP address"),
    ],
)
def test_bad_arguments_exit_2_saying_what_is_wrong(route: str, said: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["link", "--route", route, "--control", str(tmp_path / "s")], prog_name="mqlab"
    )
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split()), result.output


def test_a_route_parses_and_reads_back() -> None:
    route = Route.parse("127.0.0.1:6380=[fd00::1]:40000")
    assert str(route) == "127.0.0.1:6380=[fd00::1]:40000"
    assert route.upstream.host == "fd00::1" and route.upstream.port == 40000


async def test_the_control_socket_is_never_made_over_what_is_not_ours(tmp_path: Path) -> None:
    from mqlab.lab.hosts.link import Link

    folder = tmp_path / "ctl"
    folder.mkdir(mode=0o700)
    link = Link([])
    (folder / "file").write_text("x")
    with pytest.raises(UnsafePath, match="is not a socket"):
        await serve_control(link, folder / "file")
    (folder / "link").symlink_to(folder / "file")
    with pytest.raises(UnsafePath, match="is not a socket"):
        await serve_control(link, folder / "link")
    folder.chmod(0o755)
    with pytest.raises(UnsafePath, match="open to other users"):
        await serve_control(link, folder / "new.sock")
    folder.chmod(0o700)
    # A stale socket (nobody listening) is replaced; a live one is refused.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(folder / "s.sock"))
    stale.close()
    server = await serve_control(link, folder / "s.sock")
    try:
        assert (os.stat(folder / "s.sock").st_mode & 0o777) == 0o600
        with pytest.raises(UnsafePath, match="a link that still runs"):
            await serve_control(link, folder / "s.sock")
    finally:
        server.close()
        await server.wait_closed()


def test_sigterm_stops_the_link_and_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory, echo: int
) -> None:
    port = free_port()
    folder = tmp_path_factory.mktemp("own")
    running = start_link(folder, f"127.0.0.1:{port}=127.0.0.1:{echo}")
    assert running.ready == f"link ready: 127.0.0.1:{port}=127.0.0.1:{echo}\n"
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"hello")
        assert sock.recv(5) == b"hello"
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(10) == 0
        assert sock.recv(5) == b""  # its connections were closed
    assert running.proc.stdout is not None
    running.proc.stdout.close()
    assert not pid_alive(running.proc.pid)
    assert not (folder / "link.sock").exists()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
