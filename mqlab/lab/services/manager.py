"""`mqlab services up | down | status`: start, reuse, report and stop the embedded servers."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mqlab.lab.services import listen as listening
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.services.home import (
    checked,
    home,
    identity,
    read_state,
    save_identity,
    write_state,
)
from mqlab.private_files import UnsafePath, open_private
from mqlab.procs import on_a_free_port, pid_alive, terminate

_SERVERS = {valkey_server.NAME: valkey_server, postgres_server.NAME: postgres_server}
#: What each server's command line contains; tells a live server from a reused pid.
_EXPECT = {valkey_server.NAME: valkey_server.COMMANDS, postgres_server.NAME: ("postgres",)}
#: Fast shutdown for PostgreSQL (SIGTERM waits for clients to leave); SIGTERM for Valkey.
_STOP_SIGNAL = {valkey_server.NAME: signal.SIGTERM, postgres_server.NAME: signal.SIGINT}


class ServicesError(RuntimeError):
    """A server could not be started or found."""


@dataclass(frozen=True)
class ServiceInfo:
    """One embedded server as `services status` shows it."""

    name: str
    state: str  # running | started | stopped | stale (pid file of a dead server, cleaned)
    url: str = ""
    tcp_url: str = ""
    remote_url: str = ""  # for other hosts, on the --listen address ("" when none)
    pid: int | None = None
    version: str = ""
    healthy: bool = False


@contextlib.contextmanager
def _locked(base: Path) -> Iterator[None]:
    """One `up`/`down` at a time per MQLAB_HOME (two terminals, or tests in parallel), once
    the home is found to be ours alone (see home.checked)."""
    with _refused():
        fd = open_private(checked(base) / ".lock", os.O_WRONLY | os.O_CREAT)
    with os.fdopen(fd, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            with _refused():
                yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """An unsafe home (or file in it) as the ServicesError every command reports (the message
    says what to do); UnsafePath stays its own type for the callers below the commands."""
    try:
        yield
    except UnsafePath as exc:
        raise ServicesError(str(exc)) from None


def _alive(name: str, record: dict[str, Any]) -> bool:
    return pid_alive(record.get("pid"), _EXPECT[name])


def up(
    *,
    owned: bool = False,
    base: Path | None = None,
    listen: str | None = None,
    only: list[str] | None = None,
) -> list[ServiceInfo]:
    """Start what is not running, reuse what is. Idempotent; applies the schema.

    owned=True makes the servers we start die with this process (the lab commands);
    `mqlab services up` starts daemons that stay until `mqlab services down`. `listen`: an
    address of this machine to serve other hosts on as well (see mqlab.lab.services.listen).
    `only`: the servers to start (by name; all when None), PostgreSQL among them.
    """
    from mqlab.db import apply_schema

    try:
        where = listening.check(listen) if listen is not None else None
    except listening.ListenError as exc:
        raise ServicesError(str(exc)) from None
    root = base or home()
    infos: list[ServiceInfo] = []
    with _locked(root):
        state = read_state(root)
        for name, module in _SERVERS.items():
            if only is not None and name not in only:
                continue
            record = state.get(name)
            # Without --listen, what runs is reused however it listens; with one, it must match.
            now = (record or {}).get("listen")
            if record and where and _alive(name, record) and now != where.address:
                now = now or "127.0.0.1 only"
                raise ServicesError(
                    f"the embedded {name} runs already, listening on {now}: stop the servers "
                    "with `mqlab services down`, then start them with the --listen you want"
                )
            if record and _alive(name, record):
                healthy, version = module.probe(record)
                if healthy:
                    infos.append(_info(name, "running", record, healthy, version))
                    continue
                raise ServicesError(
                    f"{name} (pid {record['pid']}) runs but does not answer; "
                    f"see {root / 'log'} or run `mqlab services down`"
                )
            # The port is chosen once per home and kept, so that `down` then `up` gives the
            # same URLs and a running API and its workers reconnect on their own.
            ident = identity(root)
            kept = ident["ports"].get(name) or (record.get("port") if record else None)
            try:
                start = functools.partial(module.start, root, owned=owned, listen=where)
                new = on_a_free_port(start, kept, (OSError, RuntimeError))
            except (OSError, RuntimeError) as exc:
                raise ServicesError(f"could not start the embedded {name}: {exc}") from exc
            if where is not None:
                _refuses_strangers(name, new, where.address)
            if new["port"] != ident["ports"].get(name):
                ident["ports"][name] = new["port"]
                save_identity(root, ident)
            new["owned"] = owned
            state[name] = new
            write_state(state, root)
            infos.append(_info(name, "started", new, True, new.get("version", "")))
        apply_schema(state[postgres_server.NAME]["url"])
    return infos


def _refuses_strangers(name: str, record: dict[str, Any], address: str) -> None:
    """The server just started on `address` must turn away a client without the password;
    if it lets one in, it is stopped and the start fails (it must never serve other hosts
    so)."""
    if name == valkey_server.NAME:
        let_in = listening.valkey_lets_in(address, record["port"])
    else:
        let_in = listening.postgres_lets_in(
            address, record["port"], postgres_server.APP_ROLE, postgres_server.DATABASE
        )
    if let_in:
        terminate(record["pid"], _STOP_SIGNAL[name], timeout=15)
        raise ServicesError(
            f"the embedded {name} let a client without the password in on {address}: "
            "stopped; it serves other hosts only with its password"
        )


def down(*, base: Path | None = None, only: list[str] | None = None) -> list[ServiceInfo]:
    """Stop the recorded servers (all, or those named in `only`) and forget them."""
    root = base or home()
    infos: list[ServiceInfo] = []
    with _locked(root):
        state = read_state(root)
        for name in list(_SERVERS):
            record = state.get(name)
            if not record or (only is not None and name not in only):
                continue
            if _alive(name, record):
                terminate(record["pid"], _STOP_SIGNAL[name], timeout=15)
                infos.append(_info(name, "stopped", record, False, record.get("version", "")))
            else:
                infos.append(_info(name, "stale", record, False, ""))
            del state[name]
        write_state(state, root)
    return infos


def status(*, base: Path | None = None) -> list[ServiceInfo]:
    """What runs now, with health; a record of a dead server is reported stale and cleaned."""
    root = base or home()
    infos: list[ServiceInfo] = []
    with _locked(root):
        state = read_state(root)
        changed = False
        for name, module in _SERVERS.items():
            record = state.get(name)
            if not record:
                infos.append(ServiceInfo(name=name, state="stopped"))
            elif _alive(name, record):
                healthy, version = module.probe(record)
                infos.append(_info(name, "running", record, healthy, version))
            else:
                infos.append(_info(name, "stale", record, False, ""))
                del state[name]
                changed = True
        if changed:
            write_state(state, root)
    return infos


def running_urls(base: Path | None = None) -> tuple[str | None, str | None]:
    """The URLs of live embedded servers (None where a server is not running)."""
    with _refused():
        state = read_state(base)
    urls: list[str | None] = []
    for name in (valkey_server.NAME, postgres_server.NAME):
        record = state.get(name)
        urls.append(record["url"] if record and _alive(name, record) else None)
    return urls[0], urls[1]


def _info(
    name: str, state: str, record: dict[str, Any], healthy: bool, version: str
) -> ServiceInfo:
    return ServiceInfo(
        name=name,
        state=state,
        url=record.get("url", ""),
        tcp_url=record.get("tcpUrl", ""),
        remote_url=record.get("remoteUrl", ""),
        pid=record.get("pid"),
        version=version,
        healthy=healthy,
    )
