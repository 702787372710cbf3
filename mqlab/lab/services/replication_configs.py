"""The configs of a replicated Valkey's members (mqlab.lab.services.replication): its users
and their rules, and the Sentinels' timings.

Each user has a password of its own, generated here and written only into the 0600 configs
(hashed in `user` lines; `masterauth` and `sentinel auth-pass` must be clear).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mqlab.lab.services import valkey_server

#: The name the Sentinels know the primary by (the Sentinel URL's path).
SERVICE = "mqlab"
#: How long the Sentinels wait before they call an unanswering primary down (ms). 1 s is
#: the shortest that stays quiet on a busy 2-core machine: the lab's own load delays PINGs.
DOWN_AFTER_MS = 1000
#: A failover's timeout (ms): also how long before a failed one is tried again (twice it).
FAILOVER_TIMEOUT_MS = 3000
#: What a replica sends its primary.
REPLICA_COMMANDS = ("psync", "replconf", "ping")
#: What a Sentinel sends a node it monitors: Valkey's documented list (topics/sentinel.md,
#: "Redis ACL authentication"), plus REPLICAOF (the new name of SLAVEOF) and FAILOVER,
#: which Valkey 9's Sentinel may use.
NODE_SENTINEL_RULES = (
    "allchannels -@all +multi +slaveof +replicaof +ping +exec +subscribe +config|rewrite "
    "+role +publish +info +client|setname +client|kill +script|kill +failover"
)
#: What a client may ask a Sentinel: redis-py's discovery (SENTINEL MASTERS, REPLICAS,
#: SENTINELS), the one-question form other clients use, and connecting.
CLIENT_SENTINEL_COMMANDS = (
    "auth", "hello", "ping", "client|setinfo", "client|setname",
    "sentinel|masters", "sentinel|master", "sentinel|get-master-addr-by-name",
    "sentinel|replicas", "sentinel|slaves", "sentinel|sentinels",
)  # fmt: skip
#: What the Sentinels send each other: hellos, the vote on a primary being down, PINGs.
PEER_SENTINEL_COMMANDS = (
    "auth", "hello", "ping", "client|setname", "publish", "sentinel|is-master-down-by-addr",
)  # fmt: skip


@dataclass(frozen=True)
class Address:
    """Where a node listens, and the lab host (network namespace) it runs in."""

    host: str
    port: int
    netns: str | None = None


def hostport(address: Address) -> str:
    """host:port for a URL ([host]:port for IPv6)."""
    host = f"[{address.host}]" if ":" in address.host else address.host
    return f"{host}:{address.port}"


def _user(name: str, password: str, rules: str) -> str:
    """A config line for a user with its password stored hashed."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return f"user {name} on #{digest} {rules}"


def _allow(commands: Sequence[str], channels: str = "resetchannels") -> str:
    """ACL rules: these commands only (and no pub/sub channel unless `channels` says)."""
    return " ".join([channels, "-@all", *(f"+{command}" for command in commands)])


class Secrets:
    """The group's own passwords (the app user's is the home's); never in a repr."""

    def __init__(self) -> None:
        self.replica, self.sentinel, self.client, self.peer = (
            secrets.token_urlsafe(24) for _ in range(4)
        )

    def __repr__(self) -> str:
        return "Secrets(...)"


def node_config(
    address: Address, data: Path, app_password: str, keys: Secrets, primary: Address | None
) -> str:
    """A data node's config: a replica of `primary`, or a primary when it is None."""
    lines = [
        *valkey_server.node_settings(data, address.host, address.port),
        valkey_server.app_user(app_password),
        _user("replica", keys.replica, _allow(REPLICA_COMMANDS)),
        _user("sentinel", keys.sentinel, NODE_SENTINEL_RULES),
        # Both nodes: whichever is demoted logs in to the other as `replica`.
        "masteruser replica",
        f"masterauth {keys.replica}",
        # The address the Sentinels and the primary are told: the one it listens on, not
        # the source address of its connection (another on a multi-homed lab host).
        f"replica-announce-ip {address.host}",
        # A replica's first sync starts at once, not after the default 5 s wait for more
        # replicas to share it (there is one): the group settled in 2.5 s instead of 5.2 s.
        "repl-diskless-sync-delay 0",
    ]
    if primary is not None:
        lines.append(f"replicaof {primary.host} {primary.port}")
    return "\n".join(lines) + "\n"


def sentinel_config(
    address: Address,
    data: Path,
    keys: Secrets,
    primary: Address,
    *,
    service: str,
    down_after_ms: int,
    failover_timeout_ms: int,
) -> str:
    """A Sentinel's config: it watches `primary` as `service`, with quorum 2 of 3."""
    return "\n".join([
        f"port {address.port}",
        f"bind {address.host}",
        "protected-mode yes",
        f'dir "{data}"',
        "daemonize no",
        'logfile ""',
        f"sentinel announce-ip {address.host}",
        f"sentinel monitor {service} {primary.host} {primary.port} 2",
        f"sentinel down-after-milliseconds {service} {down_after_ms}",
        f"sentinel failover-timeout {service} {failover_timeout_ms}",
        f"sentinel parallel-syncs {service} 1",
        f"sentinel auth-user {service} sentinel",
        f"sentinel auth-pass {service} {keys.sentinel}",
        "sentinel sentinel-user peer",
        f"sentinel sentinel-pass {keys.peer}",
        "user default off resetchannels -@all",
        _user("client", keys.client, _allow(CLIENT_SENTINEL_COMMANDS)),
        _user("peer", keys.peer, _allow(PEER_SENTINEL_COMMANDS, "allchannels")),
    ]) + "\n"  # fmt: skip
