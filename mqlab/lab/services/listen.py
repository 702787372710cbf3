"""`mqlab services up --listen ADDR`: the embedded servers for other hosts, with passwords.

The servers always listen on 127.0.0.1 (and a private unix socket); `--listen` adds one address
of this machine, so that APIs and workers on other hosts reach them. Only one address of an
interface of this machine, on a private network (RFC 1918, fc00::/7): not a wildcard (every
network this machine is on, present and future), not a public address (the servers speak
without TLS, see docs/production.md). And only with their passwords: after the start, a client
without one is tried on that address, and the start fails if it is let in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import psutil
import psycopg
import redis
import redis.exceptions

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ListenError(ValueError):
    """An address the servers may not listen on; the message says why and what to do."""


@dataclass(frozen=True)
class Listen:
    """An address to serve other hosts on, and the network of its interface (the hosts that
    PostgreSQL's pg_hba.conf admits, with a password)."""

    address: str
    network: str

    def host_in_url(self) -> str:
        """The address as a URL's host: an IPv6 one in brackets."""
        return f"[{self.address}]" if ":" in self.address else self.address


def check(text: str) -> Listen:
    """`text` as a Listen, or ListenError saying why it may not be one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ListenError(f"--listen takes an IP address of this machine, not {text!r}") from None
    if address.is_unspecified:
        raise ListenError(
            f"{address} would expose the servers on every network of this machine: name the "
            "one address other hosts reach them on (`ip -br addr` lists them)"
        )
    if address.is_loopback:
        raise ListenError(f"{address} is loopback: the servers listen there already")
    if address.is_global or not address.is_private:
        raise ListenError(
            f"{address} is not on a private network: the servers speak without TLS, so they "
            "listen only on private addresses (10/8, 172.16/12, 192.168/16, fc00::/7)"
        )
    network = interface_network(address)
    if network is None:
        raise ListenError(
            f"no interface of this machine has the address {address} (`ip -br addr` lists them)"
        )
    return Listen(str(address), str(network))


def interface_networks() -> list[tuple[IPAddress, IPNetwork]]:
    """(address, the network of its interface) of every IP address of this machine's
    interfaces, in this process's network namespace."""
    out = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.netmask is None or addr.family.name not in ("AF_INET", "AF_INET6"):
                continue
            try:
                mine = ipaddress.ip_address(addr.address.split("%")[0])
                out.append((mine, ipaddress.ip_network(f"{mine}/{addr.netmask}", strict=False)))
            except ValueError:
                continue
    return out


def interface_network(address: IPAddress) -> IPNetwork | None:
    """The network of the interface that has `address` (None: no interface has it)."""
    return next((net for mine, net in interface_networks() if mine == address), None)


def valkey_lets_in(address: str, port: int) -> bool:
    """Whether Valkey on address:port runs a command for a client that gave no password
    (NOAUTH, or the ACL's NOPERM, say no; any other failure is no proof either way)."""
    client = redis.Redis(host=address, port=port, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.dbsize()
        return True
    except (redis.AuthenticationError, redis.exceptions.NoPermissionError):
        return False
    finally:
        client.close()


def postgres_lets_in(address: str, port: int, user: str, database: str) -> bool:
    """Whether PostgreSQL on address:port lets `user` in without a password."""
    try:
        with psycopg.connect(
            host=address, port=port, user=user, dbname=database, password="", connect_timeout=3
        ):
            return True
    except psycopg.OperationalError as exc:
        if "password" in str(exc).lower():
            return False
        raise
