"""The lab on several hosts, for real: network namespaces on a bridge (root only; skipped with
the reason elsewhere), servers that serve the bridge with their passwords only, a row of each
kind (plain, latency, partition, failover) with its ledger, and nothing left behind after a
run, after Ctrl-C and after SIGKILL of the runner."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mqlab.experiments import Hosts, parse
from mqlab.figures.results import Verdict
from mqlab.lab.hosts.lab import HostsLab
from mqlab.lab.hosts.network import available, tag_prefix
from mqlab.lab.hosts.suite_run import run_on_hosts
from mqlab.lab.runner import Runner
from mqlab.lab.services.listen import ListenError, check, postgres_lets_in, valkey_lets_in
from mqlab.procs import wait_until
from mqlab.protocol.ids import host_by_prefix


@functools.cache
def _why_not() -> str:
    return available()


def _needs_hosts() -> None:
    if _why_not():
        pytest.skip(_why_not())


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def test_listen_refuses_what_would_expose_the_servers() -> None:
    for address, says in [
        ("0.0.0.0", "every network"),
        ("::", "every network"),
        ("127.0.0.1", "loopback"),
        ("8.8.8.8", "not on a private network"),
        ("10.255.254.253", "no interface"),
        ("not-an-ip", "IP address"),
    ]:
        with pytest.raises(ListenError, match=says):
            check(address)


@pytest.fixture(scope="module")
def lab() -> Iterator[HostsLab]:
    _needs_hosts()
    with HostsLab(Hosts(api=("hosta",), workers=("hosta", "hostb"))) as opened:
        yield opened


SUITE = {
    "suite": {"name": "hosts-small", "job_seconds": 0.2},
    "api": {"max_latency_ms": 500},
    "hosts": {"api": ["hosta"], "workers": ["hosta", "hostb"]},
    "row": [
        {"name": "plain", "orders": 8, "workers": 2, "expected_seconds": 0.8,
         "tolerance_seconds": 0.5},
        {"name": "drain +0 ms", "orders": 200, "workers": 2, "job_seconds": 0, "batch": 1,
         "prefill": True},
        {"name": "drain +2 ms", "orders": 200, "workers": 2, "job_seconds": 0, "batch": 1,
         "prefill": True, "link_delay_ms": 2},
        {"name": "partition", "orders": 24, "workers": 2, "job_seconds": 0.5,
         "fire_seconds": 2, "partition_host": "hostb", "partition_after": 1,
         "partition_seconds": 5},
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_rows_on_hosts_keep_their_ledgers(lab: HostsLab) -> None:
    """About 30 s: the kata's kind of row over two hosts, a round trip's cost, a partition."""
    assert lab.settings is not None and lab.sup is not None
    result = asyncio.run(Runner(lab.settings, lab.sup, hosts=lab).run_suite(parse(SUITE)))
    rows = {r.row.name: r for r in result.rows}
    for r in result.rows:
        x = r.ledger
        assert x is not None, r.row.name
        assert (x.lost, x.completed_twice, x.accepted) == (0, 0, r.row.orders), r.row.name
        assert r.verdict is not None and r.verdict.passes, (r.row.name, r.reason)

    # The workers ran on both hosts, named for them.
    hosts = ["hosta", "hostb"]
    done_by = {host_by_prefix(j.worker_id or "", hosts) for j in rows["plain"].representative.jobs}
    assert done_by == {"hosta", "hostb"}

    # Each job waits on a server at least once: at 2 ms each way, a worker does no more than
    # 250 jobs a second, so two take at least 0.4 s for 200.
    assert rows["drain +2 ms"].makespan >= 200 * 0.004 / 2

    partition = rows["partition"].ledger
    assert partition is not None and partition.recovery_kind == "cut -> taken over"
    assert partition.timings["cut -> healed"] >= 5
    # hostb's job in hand was taken over by hosta after the heartbeat's TTL.
    assert partition.recovery and 0 < partition.recovery_max < 20
    assert partition.work_twice >= 1


@pytest.mark.slow
def test_servers_refuse_a_client_without_the_password_on_the_bridge(lab: HostsLab) -> None:
    assert lab.net is not None and lab.settings is not None
    address = lab.net.lab_address
    redis_port, pg_port = lab.ports["redis"], lab.ports["postgres"]
    assert not valkey_lets_in(address, redis_port)
    assert not postgres_lets_in(address, pg_port, "mqlab", "mqlab")
    assert not postgres_lets_in(address, pg_port, "postgres", "postgres")
    # And from a host, across the bridge.
    host = lab.net.hosts[0]
    code = (
        "from mqlab.lab.services.listen import valkey_lets_in, postgres_lets_in\n"
        f"print(valkey_lets_in({address!r}, {redis_port}),"
        f" postgres_lets_in({address!r}, {pg_port}, 'mqlab', 'mqlab'))"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", host.netns, sys.executable, "-c", code],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.stdout.split() == ["False", "False"], out.stderr


SMALL = """
[suite]
name = "hosts-tiny"
job_seconds = 30
[hosts]
api = ["hosta"]
workers = ["hosta", "hostb"]
[[row]]
orders = 4
workers = 2
"""


def _descendants(pid: int) -> dict[int, list[str]]:
    """pid -> command line of each process below `pid` (those that vanish meanwhile left out)."""
    out = {}
    for child in psutil.Process(pid).children(recursive=True):
        try:
            out[child.pid] = child.cmdline()
        except psutil.NoSuchProcess:
            continue
    return out


def _started_lab(tmp_path: Path) -> tuple[subprocess.Popen[bytes], list[int], str]:
    """`mqlab run-experiment` of a suite whose row runs long, once its API and workers run:
    (the runner, every process it started, its namespaces' tag)."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(textwrap.dedent(SMALL))
    runner = subprocess.Popen(
        [sys.executable, "-m", "mqlab", "run-experiment", str(suite), "--out", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tag = f"mqlab-{tag_prefix(runner.pid)}"

    def workers_run() -> bool:
        return sum(1 for c in _descendants(runner.pid).values() if "worker" in c) >= 2

    try:
        assert wait_until(workers_run, timeout=90, interval=0.2), "no workers were started"
        started = list(_descendants(runner.pid))
        assert any(ns.startswith(tag) for ns in _netns())
    except BaseException:
        runner.send_signal(signal.SIGINT)  # a failed test leaves no lab running
        runner.wait(60)
        raise
    return runner, started, tag


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _nothing_left(started: list[int], tag: str, timeout: float) -> None:
    def gone() -> bool:
        alive = [
            p for p in started if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
        bridge = tag.replace("mqlab-", "mqbr-", 1)
        ours = [n for n in [*_netns(), *_links()] if n.startswith((tag, bridge))]
        return not alive and not ours

    assert wait_until(gone, timeout=timeout, interval=0.2), (
        [p for p in started if psutil.pid_exists(p)],
        _netns(),
    )


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_nothing_is_left_after_ctrl_c_or_sigkill(tmp_path: Path, sig: signal.Signals) -> None:
    _needs_hosts()
    runner, started, tag = _started_lab(tmp_path)
    os.kill(runner.pid, sig)
    runner.wait(60)
    if sig == signal.SIGINT:
        assert runner.returncode == 130
    _nothing_left(started, tag, timeout=30)


FAILOVER = {
    "suite": {"name": "hosts-failover", "job_seconds": 0.3},
    "api": {"max_latency_ms": 500},
    "hosts": {"api": ["hosta"], "workers": ["hosta", "hostb"]},
    "row": [
        {"name": "failover", "orders": 80, "workers": 2, "fire_seconds": 8,
         "failover_after": 2, "failover_lag_seconds": 1},
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_failover_row_loses_nothing() -> None:
    """About 35 s: Valkey replicated behind Sentinels on lab hosts, its replica cut off from
    the primary for a second and the primary SIGKILLed; the APIs and workers follow the
    promoted replica, the pushes it never got are queued again by the reconciler (the orders
    come faster than the workers take them, so some wait in the queue), and the ledger
    balances."""
    _needs_hosts()
    result, versions = run_on_hosts(parse(FAILOVER))
    (row,) = result.rows
    x = row.ledger
    assert x is not None
    assert (x.lost, x.completed_twice, x.dead) == (0, 0, 0), x.problems
    assert x.accepted + x.refused == 80 and x.accepted == x.completed
    assert 0 < x.timings["kill -> replica promoted"] < 30
    assert x.timings["kill -> last job"] > 0
    assert 0 < x.timings["kill -> 202s again"] < 30
    assert x.reconciled >= 1  # the pushes acknowledged while the replica was cut off
    assert row.verdict is Verdict.OK, row.reason
    assert "Sentinels" in versions["redis"]
