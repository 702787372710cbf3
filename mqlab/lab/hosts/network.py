"""A lab network: hosts made of Linux network namespaces on a private bridge.

The lab's side (where the servers run) is this machine's own namespace, on the bridge at
`.1` of a /24 of 10.200.0.0/16 that no interface here uses yet (so that two labs at once, or a
lab and a network of the person's, never share one); each host is a namespace with a veth
pair to the bridge, the address `.11`, `.12`, ... and a loopback. No host has a default route,
and the bridge carries nothing else: a host reaches the lab's side and the other hosts, and no
address outside the subnet.

Needs root and a working `ip netns` (`available()` says why not, for a row to skip). Every
namespace, link and folder is told to a janitor (mqlab.lab.hosts.janitor) before it is made,
so that nothing is left when the lab is SIGKILLed; close() removes them itself on any other
way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mqlab.lab.environment import Opened
from mqlab.lab.hosts.janitor import OWN_NAME, Journal, clean
from mqlab.lab.services.listen import interface_networks
from mqlab.procs import is_root

#: The subnets a lab network takes one /24 of.
POOL = ipaddress.ip_network("10.200.0.0/16")
#: Host addresses from this one on (.11, .12, ...): .1 is the lab's side.
FIRST_HOST = 11
#: One lab at a time picks its subnet and makes its bridge.
_LOCK = Path("/run/mqlab-hosts.lock")


#: Networks made by this process so far: a process may hold two at once (a test's, a row's).
_NETWORKS = itertools.count(1)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = digits[d] + out
        if not n:
            return out


def tag_prefix(pid: int) -> str:
    """What the names of every network made by process `pid` start with after `mqlab-` (or
    `mqbr-`): its pid in base 36 and an `x`, then the network's number (a short tag: a link's
    name holds 15 characters)."""
    return f"{_base36(pid)}x"


class NetworkError(RuntimeError):
    """The network could not be made (the message says what `ip` answered)."""


@dataclass(frozen=True)
class Host:
    """One lab host: its name (what its processes call their host), its namespace and its
    address on the bridge."""

    name: str
    netns: str
    address: str


def available() -> str:
    """'' when namespaces can be made here; else why not, in words for a person."""
    if not sys.platform.startswith("linux"):
        return "lab hosts are Linux network namespaces: not on this system"
    if not is_root():
        return "lab hosts need root (network namespaces and a bridge): run as root"
    if shutil.which("ip") is None:
        return "lab hosts need the `ip` command (iproute2)"
    probe = f"mqlab-{os.getpid():x}-probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` does not work here: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return ""


def _ip(
    *args: str, check: bool = True, netns: str | None = None
) -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(("-n", netns) if netns else ()), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise NetworkError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def used_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this namespace's interfaces."""
    return [net for _, net in interface_networks() if isinstance(net, ipaddress.IPv4Network)]


def free_subnet() -> ipaddress.IPv4Network:
    """The first /24 of POOL that overlaps no interface's network."""
    used = used_networks()
    for subnet in POOL.subnets(new_prefix=24):
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetworkError(f"every /24 of {POOL} is in use on this machine")


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(_LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Network(Opened["Network"]):
    """`with Network(["hosta", "hostb"]) as net:` net.hosts, net.lab_address; close() (or the
    janitor, if this process is killed) removes every namespace and link it made, and kills
    what still runs in them."""

    def __init__(self, names: list[str], remove: list[Path] | None = None) -> None:
        for name in names:
            if not OWN_NAME.fullmatch(f"mqlab-x-{name}"):
                raise ValueError(f"a host name is 1-16 lowercase letters and digits: {name!r}")
        self.names = names
        #: Folders of the lab's own (made by it) that the janitor removes if the lab dies.
        self.remove = list(remove or [])
        self.tag = f"{tag_prefix(os.getpid())}{_base36(next(_NETWORKS))}"
        self.bridge = f"mqbr-{self.tag}"
        self.hosts: list[Host] = []
        self.subnet: ipaddress.IPv4Network | None = None
        self._janitor: subprocess.Popen[str] | None = None

    @property
    def lab_address(self) -> str:
        """The lab's side of the bridge: where the servers listen for the hosts."""
        assert self.subnet is not None
        return str(self.subnet.network_address + 1)

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def _tell(self, **entry: str) -> None:
        """Tell the janitor of what is about to be made."""
        assert self._janitor is not None and self._janitor.stdin is not None
        self._janitor.stdin.write(json.dumps(entry) + "\n")
        self._janitor.stdin.flush()

    def open(self) -> Network:
        # Its own session, no parent-death signal: it must outlive a SIGKILLed lab.
        self._janitor = subprocess.Popen(
            [sys.executable, "-m", "mqlab.lab.hosts.janitor"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        for path in self.remove:
            self._tell(path=str(path))
        with _locked():
            self.subnet = free_subnet()
            prefix = self.subnet.prefixlen
            self._tell(link=self.bridge)
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.lab_address}/{prefix}", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            self.hosts.append(self._add_host(i, name, prefix))
        return self

    def _add_host(self, i: int, name: str, prefix: int) -> Host:
        assert self.subnet is not None
        netns, veth, peer = f"mqlab-{self.tag}-{name}", f"mqv-{self.tag}-{i}", f"mqp-{self.tag}-{i}"
        address = str(self.subnet.network_address + FIRST_HOST + i)
        self._tell(netns=netns)
        _ip("netns", "add", netns)
        self._tell(link=veth)  # deleting it deletes its peer too
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("link", "set", "lo", "up", netns=netns)
        _ip("link", "set", peer, "name", "eth0", netns=netns)
        _ip("addr", "add", f"{address}/{prefix}", "dev", "eth0", netns=netns)
        _ip("link", "set", "eth0", "up", netns=netns)
        return Host(name=name, netns=netns, address=address)

    def close(self) -> None:
        """Kill what runs in the hosts, delete them and the bridge; then let the janitor go
        (it finds nothing left to do)."""
        clean(Journal(netns=[f"mqlab-{self.tag}-{n}" for n in self.names], links=[self.bridge]))
        self.hosts = []
        if self._janitor is not None:
            assert self._janitor.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self._janitor.stdin.close()
            self._janitor.wait(30)
            self._janitor = None
