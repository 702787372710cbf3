"""The lab on several hosts: what `mqlab run-experiment hosts` runs a suite with a [hosts]
table on, in place of the one-machine Stack.

- a Network of namespace hosts on a private bridge (mqlab.lab.hosts.network);
- the servers, on the lab's side: a PostgreSQL and a Valkey of their own (in a temporary
  folder, never the person's), serving the hosts on the bridge address with their passwords;
- on each host, a link (`mqlab link`, mqlab.lab.hosts.link) that its processes reach the
  servers through: it listens on the host's 127.0.0.1 at the servers' ports, so the servers'
  URLs read the same on every host and on the lab's side, and adds the row's delay or cuts
  the host off;
- a Supervisor whose places are the workers' hosts, and an API on each API host (:3000).

A replicated lab (for a failover row) runs Valkey as Valkey's own high-availability setup
instead (mqlab.lab.services.replication): a primary and a replica on two hosts of their own
and three Sentinels on the lab's side, which every client finds the primary through (a
redis+sentinel:// URL). Those connections go over the bridge, not through a link: a client
connects to whichever node the Sentinels name, and a link forwards to one fixed address.

Leaving it stops every process, and removes every namespace, link and folder; a SIGKILLed lab
leaves that to the network's janitor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mqlab.experiments import Hosts
from mqlab.lab import services
from mqlab.lab.environment import Opened
from mqlab.lab.hosts.link_control import LinkControl
from mqlab.lab.hosts.network import Host, Network, available
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.services.replication import Address, ReplicatedValkey
from mqlab.lab.stack import NotOurServer
from mqlab.lab.supervisor import LineHandler, Place, Supervisor
from mqlab.private_files import private_dir
from mqlab.procs import free_port, keep, spawn, terminate, wait_until
from mqlab.settings import Settings

#: The hosts of a replicated Valkey's primary and replica (a failover row's lab).
VALKEY_HOSTS = ("valkeya", "valkeyb")
#: The port every host's API listens on, in its own namespace: the kata's.
API_PORT = 3000
#: A round trip to PostgreSQL from a host, through its link: SELECT 1, SAMPLES times, the
#: median in ms (the URL, with its password, comes in the environment: `ps` shows argv).
_PROBE = """
import os, statistics, time, psycopg
with psycopg.connect(os.environ["PROBE_URL"], autocommit=True) as conn:
    conn.execute("SELECT 1")
    took = []
    for _ in range(int(os.environ["PROBE_SAMPLES"])):
        start = time.perf_counter()
        conn.execute("SELECT 1")
        took.append(time.perf_counter() - start)
print(statistics.median(took) * 1000)
"""
#: Seconds a link gets to say it is ready.
LINK_READY_SECONDS = 15


class HostsUnavailable(RuntimeError):
    """Lab hosts cannot be made here (the message says why: not root, no `ip netns`)."""


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


class HostsLab(Opened["HostsLab"]):
    """`with HostsLab(Hosts()) as lab:` lab.settings (the lab side's URLs), lab.sup (an API
    on each API host), lab.links (each host's LinkControl)."""

    def __init__(
        self, layout: Hosts, on_line: LineHandler | None = None, replicated: bool = False
    ) -> None:
        self.layout = layout
        self.replicated = replicated
        self.valkey: ReplicatedValkey | None = None
        self._killed = ""  # the Valkey node kill_primary() killed
        self.on_line = on_line
        self.base: Path | None = None
        self.net: Network | None = None
        self.settings: Settings | None = None
        self.sup: Supervisor | None = None
        self.links: dict[str, LinkControl] = {}
        #: The servers' ports (by name: "redis", "postgres"), the same on every host.
        self.ports: dict[str, int] = {}
        self._link_procs: list[subprocess.Popen[bytes]] = []
        self._versions: dict[str, str] = {}

    def open(self) -> HostsLab:
        why = available()
        if why:
            raise HostsUnavailable(why)
        self.base = Path(tempfile.mkdtemp(prefix="mqlab-hosts-"))
        names = self.layout.names + (list(VALKEY_HOSTS) if self.replicated else [])
        self.net = Network(names, remove=[self.base])
        self.net.open()
        lab_address = self.net.lab_address
        only = [postgres_server.NAME] if self.replicated else None
        infos = {
            i.name: i
            for i in services.up(owned=True, base=self.base, listen=lab_address, only=only)
        }
        pg_info = infos[postgres_server.NAME]
        self.ports = {postgres_server.NAME: _port(pg_info.tcp_url)}
        if self.replicated:
            self.valkey = self._start_valkey()
            lab_redis = host_redis = self.valkey.sentinel_url
            version = valkey_server.probe({"url": self.valkey.node_url("valkey-1")})[1]
            self._versions["redis"] = f"{version}: a primary, a replica, three Sentinels"
        else:
            redis_info = infos[valkey_server.NAME]
            lab_redis, host_redis = redis_info.url, redis_info.tcp_url
            self.ports[valkey_server.NAME] = _port(redis_info.tcp_url)
            self._versions["redis"] = redis_info.version
        self._versions["postgres"] = pg_info.version
        # The lab's side talks to its servers directly; a host through its link, which
        # listens on the host's loopback at the servers' own ports: the same TCP URLs.
        self.settings = Settings(lab_redis, pg_info.url)
        on_hosts = Settings(host_redis, pg_info.tcp_url)
        for name in self.layout.names:
            host = self.net.host(name)
            self.links[name] = self._start_link(host, list(self.ports.values()))
        places = {
            h.name: Place(host=h.name, netns=h.netns, address=h.address, settings=on_hosts)
            for h in map(self.net.host, self.layout.names)
        }
        self.sup = Supervisor(self.settings, self.on_line, [places[n] for n in self.layout.workers])
        for name in self.layout.api:
            self.sup.start_api(API_PORT, place=places[name])
        return self

    def _start_valkey(self) -> ReplicatedValkey:
        """The primary and the replica on their hosts, the Sentinels on the lab's side."""
        assert self.base is not None and self.net is not None
        nodes = [self.net.host(n) for n in VALKEY_HOSTS]
        port = free_port()  # each node in a namespace of its own: one port for both
        lab = self.net.lab_address
        sentinels = [Address(lab, free_port(lab)) for _ in range(3)]
        group = ReplicatedValkey(
            self.base,
            Address(nodes[0].address, port, nodes[0].netns),
            Address(nodes[1].address, port, nodes[1].netns),
            sentinels,
        )
        return group.open()

    def kill_primary(self, lag_seconds: float = 0.0) -> float:
        """SIGKILL the Valkey primary (a replicated lab's): its Sentinels promote the replica.
        With lag_seconds, the replica is cut off from the primary that long first, and until
        it is promoted (the dead primary's kernel would still deliver what it had sent): the
        writes the primary acknowledged meanwhile are lost with it. Returns when it was
        killed (epoch seconds)."""
        if self.valkey is None:
            raise RuntimeError("this lab's Valkey is a single server: nothing fails over")
        with self.valkey.replica_behind() if lag_seconds else contextlib.nullcontext():
            time.sleep(lag_seconds)
            killed_at = time.time()
            self._killed, _ = self.valkey.kill_primary()
            if lag_seconds:
                self.wait_promoted()
        return killed_at

    def wait_promoted(self, timeout: float = 60.0) -> None:
        """Until the Sentinels name a primary other than the one kill_primary() killed."""
        assert self.valkey is not None and self._killed
        self.valkey.wait_primary(self._killed, timeout)

    def _start_link(self, host: Host, ports: list[int]) -> LinkControl:
        assert self.base is not None and self.net is not None
        control = private_dir(self.base / "links") / f"{host.name}.sock"
        routes = [f"127.0.0.1:{p}={self.net.lab_address}:{p}" for p in ports]
        argv = [sys.executable, "-m", "mqlab", "link", "--control", str(control)]
        for route in routes:
            argv += ["--route", route]
        log = private_dir(self.base / "log") / f"link-{host.name}.log"
        proc = spawn(argv, owned=True, netns=host.netns, log_path=log)
        keep(proc)  # reaped by terminate() at close
        self._link_procs.append(proc)
        link = LinkControl(control)

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            with contextlib.suppress(OSError, ValueError, RuntimeError):
                link.stats()
                return True
            return False

        wait_until(ready, timeout=LINK_READY_SECONDS, interval=0.05)
        if proc.poll() is not None:
            said = log.read_text(errors="replace").strip()
            raise RuntimeError(f"the link on {host.name} exited at start: {said}")
        return link

    def set_links(self, delay_ms: float, jitter_ms: float = 0.0) -> None:
        """Every host's link: this delay each way, give or take jitter_ms; healed."""
        for link in self.links.values():
            link.set_delay(delay_ms, jitter_ms)
            link.heal()

    def round_trip_ms(self, samples: int = 30) -> float:
        """A round trip to PostgreSQL through the first worker host's link, as it is now:
        the median of `samples` (ms)."""
        assert self.net is not None and self.sup is not None
        place = self.sup.places[0]
        env = {**os.environ, "PROBE_URL": place.settings.database_url,
               "PROBE_SAMPLES": str(samples)}  # fmt: skip
        proc = spawn([sys.executable, "-c", _PROBE], owned=True, env=env, netns=place.netns,
                     stdout=subprocess.PIPE)  # fmt: skip
        out, _ = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"could not measure a round trip from {place.host}")
        return float(out.decode().strip())

    def cut(self, host: str) -> None:
        """Cut `host` off from the servers (its link closes every connection and refuses new
        ones) until heal()."""
        self.links[host].cut()

    def heal(self, host: str) -> None:
        self.links[host].heal()

    def close(self) -> None:
        if self.sup is not None:
            self.sup.close()
            self.sup = None
        for proc in self._link_procs:
            terminate(proc.pid, timeout=5)
        self._link_procs = []
        if self.valkey is not None:
            self.valkey.close()
            self.valkey = None
        if self.base is not None:
            with contextlib.suppress(services.ServicesError):
                services.down(base=self.base)
        if self.net is not None:
            self.net.close()  # its janitor removes the base folder
            self.net = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    @property
    def started_services(self) -> list[str]:
        """The servers this lab started (all of them: its own, in a folder of its own)."""
        return ["replicated valkey" if self.replicated else "valkey", "postgresql"]

    def postgres_stoppable(self) -> str | None:
        """Why its PostgreSQL cannot be stopped by the TUI's drill (a lab on hosts keeps it)."""
        return (
            "the lab on hosts does not stop its PostgreSQL: run the drill on one machine "
            "(mqlab tui --suite kata4)"
        )

    def stop_postgres(self, seconds: float, still_wanted: Callable[[], bool]) -> None:
        raise NotOurServer(self.postgres_stoppable() or "")

    def versions(self) -> dict[str, str]:
        """Server versions, for the report."""
        return {**self._versions, "servers": "embedded, started by this run on lab hosts"}
