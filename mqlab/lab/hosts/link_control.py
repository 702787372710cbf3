"""A link's control socket (mqlab.lab.hosts.link): the server side, and LinkControl, the
client the lab calls from its threads.

A unix socket, 0600 in a 0700 folder of the caller's: one JSON object per line in, one out.

    {"op": "set", "delay_ms": 5, "jitter_ms": 1}   {"op": "cut"}   {"op": "heal"}
    {"op": "stats"}
    -> {"ok": true, "delay_ms": 5.0, "jitter_ms": 1.0, "cut": false, "open": 2, "accepted": 7,
        "refused": 0, "bytes_up": 1234, "bytes_down": 5678}
    a bad request -> {"ok": false, "error": "what is wrong"}, and the link goes on

Every answer is the state after the request: `open`, the connections through the link now;
`accepted`, those let through since it started; `refused`, those closed at once while cut;
`bytes_up` (client to server) and `bytes_down`, the bytes written on so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

from mqlab.lab.hosts.link import Link, LinkError
from mqlab.private_files import check_owner, open_private, refuse

#: The longest request or answer line: a request is a few dozen bytes.
LINE_LIMIT = 64 * 1024

#: The fields each op takes ("op" itself aside).
_FIELDS: dict[str, set[str]] = {
    "set": {"delay_ms", "jitter_ms"},
    "cut": set(),
    "heal": set(),
    "stats": set(),
}


def answer(link: Link, line: bytes) -> dict[str, Any]:
    """Carry out one request line on `link`; what to answer (ok=false saying what is wrong)."""
    try:
        request = json.loads(line)
    except ValueError:
        return _bad('not JSON: send one JSON object per line, e.g. {"op": "stats"}')
    if not isinstance(request, dict):
        return _bad('not a JSON object: send e.g. {"op": "stats"}')
    op = request.get("op")
    if not isinstance(op, str) or op not in _FIELDS:
        return _bad(f"unknown op {op!r}: one of {', '.join(_FIELDS)}")
    unknown = set(request) - _FIELDS[op] - {"op"}
    if unknown:
        return _bad(f"{op} takes no {', '.join(sorted(unknown))}")
    if op == "set":
        if "delay_ms" not in request:
            return _bad('set needs delay_ms, e.g. {"op": "set", "delay_ms": 5, "jitter_ms": 1}')
        try:
            link.set_delay(request["delay_ms"], request.get("jitter_ms", 0))
        except ValueError as exc:
            return _bad(str(exc))
    elif op in ("cut", "heal"):
        link.set_cut(op == "cut")
    return {"ok": True, **link.stats()}


def _bad(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def _clear(path: Path) -> None:
    """Make room for the socket at `path`: its folder must be ours and private; a stale socket
    of ours goes; anything else there (a file, a link, someone's socket, a live link's) is
    refused (private_files.UnsafePath)."""
    fd = open_private(path.parent, os.O_RDONLY | os.O_DIRECTORY, kind=stat.S_IFDIR)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
    finally:
        os.close(fd)
    if mode & 0o077:
        raise refuse(path.parent, f"is open to other users (mode {mode:04o}): make it 0700")
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise refuse(path, "exists and is not a socket")
    check_owner(path, info, (os.geteuid(),))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # a socket nobody listens on: a link that was killed left it
            return
    raise refuse(path, "is the control socket of a link that still runs")


async def serve_control(link: Link, path: Path) -> asyncio.Server:
    """Answer requests for `link` on a new 0600 unix socket at `path` (see _clear)."""
    _clear(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # 0600 from its first instant, not chmodded after
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write(json.dumps(answer(link, line)).encode() + b"\n")
                await writer.drain()
        except ValueError:  # a line over the limit: say so, and hang up
            writer.write(json.dumps(_bad(f"a line over {LINE_LIMIT} bytes")).encode() + b"\n")
        except ConnectionError:
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(serve, sock=sock, limit=LINE_LIMIT)


async def ask(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """One request to the control socket at `path`, from inside an event loop."""
    reader, writer = await asyncio.open_unix_connection(str(path), limit=LINE_LIMIT)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        return dict(json.loads(await reader.readline()))
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class LinkControl:
    """Commands to the link whose control socket is at `path`, from any thread: each call is
    one connection, one line out, one line back, within `timeout` seconds. LinkError when the
    link does not answer, or answers ok=false."""

    def __init__(self, path: Path, timeout: float = 5) -> None:
        self.path, self.timeout = Path(path), timeout

    def set_delay(self, delay_ms: float, jitter_ms: float = 0) -> dict[str, Any]:
        """Delay each chunk by delay_ms ± jitter_ms, each way, from now on."""
        return self._ask({"op": "set", "delay_ms": delay_ms, "jitter_ms": jitter_ms})

    def cut(self) -> dict[str, Any]:
        """Close every connection through the link and refuse new ones (a partition)."""
        return self._ask({"op": "cut"})

    def heal(self) -> dict[str, Any]:
        """Accept connections again (the clients reconnect)."""
        return self._ask({"op": "heal"})

    def stats(self) -> dict[str, Any]:
        """The delay, the jitter, whether cut, and the counters."""
        return self._ask({"op": "stats"})

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(str(self.path))
                sock.sendall(json.dumps(request).encode() + b"\n")
                with sock.makefile("rb") as lines:
                    line = lines.readline(LINE_LIMIT)
        except OSError as exc:  # no socket, nobody listening, or the timeout
            raise LinkError(f"the link at {self.path} did not answer {op}: {exc}") from None
        try:
            reply = json.loads(line)
        except ValueError:
            raise LinkError(f"the link at {self.path} answered {op} with {line[:200]!r}") from None
        if not isinstance(reply, dict) or reply.get("ok") is not True:
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise LinkError(f"the link at {self.path} refused {op}: {error}")
        return reply
