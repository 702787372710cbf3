"""A port found free and taken by another process before our server binds it (another test
process's client, say): the server starts on another port, and says nothing to the user."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mqlab import procs
from mqlab.lab.services import manager
from mqlab.lab.supervisor import Supervisor
from mqlab.procs import free_port
from mqlab.settings import Settings


@pytest.fixture
def taken() -> Iterator[int]:
    """A port something listens on, as if taken since it was found free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def first_taken(monkeypatch: pytest.MonkeyPatch, port: int) -> list[int]:
    """procs.free_port answers `port` first, then free ones; returns what it answered."""
    answered: list[int] = []

    def fake(host: str = "127.0.0.1") -> int:
        answered.append(port if not answered else free_port(host))
        return answered[-1]

    monkeypatch.setattr(procs, "free_port", fake)
    return answered


def test_the_api_starts_on_another_port_when_its_own_was_taken(
    settings: Settings, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered = first_taken(monkeypatch, taken)
    with Supervisor(settings) as sup:
        sup.start_api()
        assert answered[0] == taken and len(answered) == 2
        assert sup.api_url == f"http://127.0.0.1:{answered[1]}"
        assert httpx.get(f"{sup.api_url}/health", timeout=5).status_code == 200


@pytest.mark.slow
def test_embedded_servers_start_on_another_port_when_theirs_was_taken(
    tmp_path_factory: pytest.TempPathFactory, taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slow by design: embedded servers of a home of their own."""
    answered = first_taken(monkeypatch, taken)
    base: Path = tmp_path_factory.mktemp("ports")
    try:
        infos = manager.up(owned=True, base=base)
        assert answered[0] == taken
        assert {i.name: i.state for i in infos} == {"redis": "started", "postgres": "started"}
        ports = manager.identity(base)["ports"]
        assert taken not in ports.values() and set(ports) == {"redis", "postgres"}
    finally:
        manager.down(base=base)
