"""Sentinel URLs, and a replicated Valkey (primary, replica, three Sentinels) on loopback whose
primary is killed while clients made from its Sentinel URL write."""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
import redis.exceptions
import redis.sentinel
from redis.backoff import NoBackoff
from redis.retry import Retry
from typer.testing import CliRunner

from mqlab.backend_errors import REDIS_DOWN
from mqlab.faces.cli import app
from mqlab.lab.services.replication import Address, ReplicatedValkey
from mqlab.lab.supervisor import Supervisor
from mqlab.procs import free_port, pid_alive
from mqlab.settings import Settings
from mqlab.system.redis_clients import (
    SentinelTarget,
    async_client,
    check_url,
    parse_sentinel_url,
    redact,
    sync_client,
)
from tests.helpers import eventually, job, post_order

SECRET = "s3cr%40t"  # percent-encoded '@': the password is s3cr@t


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://h1:26380,h2:26381/mqlab",
            SentinelTarget((("h1", 26380), ("h2", 26381)), "mqlab"),
        ),
        (
            f"redis+sentinel://default:{SECRET}@10.200.0.2:1,10.200.0.3/svc?db=3",
            SentinelTarget(
                (("10.200.0.2", 1), ("10.200.0.3", 26379)), "svc", 3,
                "default", "s3cr@t", "default", "s3cr@t",
            ),
        ),
        (
            # The others' spelling: the database as a path segment, sentinel_username.
            f"redis+sentinel://:{SECRET}@[::1]:5/svc/2?sentinel_username=c&sentinel_password=p",
            SentinelTarget((("::1", 5),), "svc", 2, None, "s3cr@t", "c", "p"),
        ),
        (
            "REDIS+SENTINEL://u:p@h:7/svc?sentinel_user=c",
            SentinelTarget((("h", 7),), "svc", 0, "u", "p", "c", "p"),
        ),
    ],
)  # fmt: skip
def test_sentinel_urls_parse(url: str, expected: SentinelTarget) -> None:
    found = parse_sentinel_url(url)
    assert found == expected
    assert "s3cr" not in repr(found)
    check_url(url)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"redis+sentinel://:{SECRET}@h:1", "names no service"),
        (f"redis+sentinel://:{SECRET}@h:1/", "names no service"),
        (f"redis+sentinel://:{SECRET}@/svc", "address is empty"),
        (f"redis+sentinel://:{SECRET}@h1:1,,h2:2/svc", "address is empty"),
        (f"redis+sentinel://:{SECRET}@h:99999/svc", "not a number 1-65535"),
        (f"redis+sentinel://:{SECRET}@h:port/svc", "not a number 1-65535"),
        (f"redis+sentinel://:{SECRET}@[::1/svc", "not [IPv6]:port"),
        (f"redis+sentinel://:{SECRET}@h/a/b/c", "must be /SERVICE or /SERVICE/DB"),
        (f"redis+sentinel://:{SECRET}@h/sv c", "must be /SERVICE or /SERVICE/DB"),
        (f"redis+sentinel://:{SECRET}@h/svc/x", "must be a number"),
        (f"redis+sentinel://:{SECRET}@h/svc?db=-1", "must be a number"),
        (f"redis+sentinel://:{SECRET}@h/svc/1?db=2", "two different databases"),
        (f"redis+sentinel://h/svc?password={SECRET}", "unknown Sentinel URL option 'password'"),
        (f"redis+sentinel://h/svc?sentinel_password={SECRET}&sentinel_password=x", "twice"),
        (f"redis+sentinel://h/svc?{SECRET}", "not name=value"),
        (f"redis+sentinel://:{SECRET}@h/svc#frag", "no #fragment"),
        (f"sentinel://:{SECRET}@h:1", "redis+sentinel://"),
        (f"http://:{SECRET}@h:1", "redis+sentinel://"),
    ],
)
def test_malformed_urls_say_what_is_wrong_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)) as caught:
        check_url(url)
    assert "s3cr" not in str(caught.value)
    with pytest.raises(ValueError):
        sync_client(url)


def test_a_command_refuses_a_malformed_redis_url(tmp_path: Path) -> None:
    url = f"redis+sentinel://:{SECRET}@h:1/svc?db=x"
    args = ["status", "--redis-url", url, "--database-url", "postgresql://u@127.0.0.1:1/x"]
    env = {"COLUMNS": "200", "MQLAB_HOME": str(tmp_path)}
    result = CliRunner().invoke(app, args, env=env, prog_name="mqlab")
    assert result.exit_code == 1
    # The console's width is set when it is made, not by COLUMNS here: read it unwrapped.
    said = " ".join(result.output.split())
    assert "the Redis URL (REDIS_URL / --redis-url)" in said
    assert "database (db=) must be a number" in said
    assert "s3cr" not in result.output


def test_redact_hides_every_password() -> None:
    url = f"redis+sentinel://u:{SECRET}@h:1,h:2/svc?db=1&sentinel_password={SECRET}"
    assert redact(url) == "redis+sentinel://u:***@h:1,h:2/svc?db=1&sentinel_password=***"
    assert redact("unix://default:pw@/run/v.sock?db=0") == "unix://default:***@/run/v.sock?db=0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


def test_plain_urls_make_plain_clients() -> None:
    client = sync_client("redis://default:pw@127.0.0.1:1/0", socket_timeout=1)
    assert type(client) is redis.Redis
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 1
    client.close()


def test_no_sentinel_answers_is_redis_down_without_the_passwords() -> None:
    """What the API and workers log when no Sentinel answers: no password in it."""
    url = f"redis+sentinel://default:{SECRET}@127.0.0.1:{free_port()}/mqlab?sentinel_password=pw2"
    client = sync_client(url, socket_timeout=1, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(REDIS_DOWN) as caught:
            client.ping()
        assert isinstance(caught.value, redis.sentinel.MasterNotFoundError)
        assert "s3cr" not in str(caught.value) and "pw2" not in str(caught.value)
        assert "s3cr" not in repr(client)
    finally:
        client.close()


def _address() -> Address:
    return Address("127.0.0.1", free_port())


#: The tests' Sentinels wait this long before they call a node down (the lab's: 1 s). Seen
#: once in a run of the whole suite on 2 cores: after the old primary's restart the Sentinels
#: named it primary again. The likely cause, not proven: a PING answered late under the load
#: started a second failover.
TEST_DOWN_AFTER_MS = 3000


@pytest.fixture
def group(tmp_path: Path) -> Iterator[ReplicatedValkey]:
    with ReplicatedValkey(
        tmp_path, _address(), _address(), [_address() for _ in range(3)],
        down_after_ms=TEST_DOWN_AFTER_MS,
    ) as g:  # fmt: skip
        yield g


def _refused(host: str, port: int, **login: str) -> bool:
    """True when a client logging in so may not even PING (a Sentinel or a node)."""
    # No retry: redis-py retries a refused login for seconds, with backoff.
    client = redis.Redis(host, port, socket_timeout=2, retry=Retry(NoBackoff(), 0), **login)
    try:
        client.ping()
    except (redis.exceptions.AuthenticationError, redis.exceptions.NoPermissionError):
        return True
    except redis.exceptions.ResponseError as exc:
        return "NOAUTH" in str(exc) or "NOPERM" in str(exc)
    finally:
        client.close()
    return False


@pytest.mark.slow
def test_a_group_starts_and_a_sentinel_client_writes(group: ReplicatedValkey) -> None:
    assert group.primary() == "valkey-1"
    client = sync_client(group.sentinel_url, socket_timeout=2, decode_responses=True)
    try:
        client.set("greeting", "hello")
        assert client.get("greeting") == "hello"
        primary = group.nodes[0].address
        assert client.connection_pool.get_master_address() == (primary.host, primary.port)
    finally:
        client.close()
    # The replica has it (replication works with the `replica` user alone).
    replica = sync_client(group.node_url("valkey-2"), decode_responses=True)
    try:
        eventually(lambda: replica.get("greeting") == "hello", timeout=10)
        with pytest.raises(redis.exceptions.ReadOnlyError):
            replica.set("greeting", "on the replica")
    finally:
        replica.close()


@pytest.mark.slow
async def test_an_async_sentinel_client_writes_and_closes_its_sentinel_clients(
    group: ReplicatedValkey,
) -> None:
    client = async_client(group.sentinel_url, socket_timeout=2)
    try:
        await client.set("a", "1")
        assert await client.get("a") == b"1"
    finally:
        await client.aclose()
    # The client asked a Sentinel, and aclose() closed that connection too (left open, it
    # would warn when collected).
    sentinels = client.connection_pool.sentinel_manager.sentinels  # type: ignore[attr-defined]
    asked = [c for s in sentinels for c in s.connection_pool._available_connections]
    assert asked
    assert not any(c.is_connected for c in asked)


@pytest.mark.slow
def test_nodes_and_sentinels_require_passwords(group: ReplicatedValkey) -> None:
    target = parse_sentinel_url(group.sentinel_url)
    for member in [*group.nodes, *group.sentinels]:
        host, port = member.address.host, member.address.port
        assert _refused(host, port), f"{member.name} answers without a password"
        assert _refused(host, port, password="wrong"), member.name
        assert _refused(host, port, username="default", password="wrong"), member.name
    # The app user's password does not open a Sentinel, nor the Sentinels' client's a node.
    sentinel, node = group.sentinels[0].address, group.nodes[0].address
    assert _refused(sentinel.host, sentinel.port, username="default", password=target.password)
    assert _refused(node.host, node.port, username="client", password=target.sentinel_password)


@pytest.mark.slow
def test_the_sentinel_client_user_may_only_find_the_primary(group: ReplicatedValkey) -> None:
    target = parse_sentinel_url(group.sentinel_url)
    address = group.sentinels[0].address
    client = redis.Redis(
        address.host, address.port, username=target.sentinel_username,
        password=target.sentinel_password, socket_timeout=2, decode_responses=True,
    )  # fmt: skip
    try:
        primary = group.nodes[0].address
        assert client.sentinel_get_master_addr_by_name("mqlab") == (primary.host, primary.port)
        for command in (
            ("SENTINEL", "SET", "mqlab", "quorum", "1"),
            ("SENTINEL", "FAILOVER", "mqlab"),
            ("SENTINEL", "REMOVE", "mqlab"),
            ("SENTINEL", "CONFIG", "GET", "*"),
            ("ACL", "LIST"),
            ("SHUTDOWN",),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
    finally:
        client.close()


@pytest.mark.slow
def test_files_are_private_and_close_leaves_nothing_running(tmp_path: Path) -> None:
    g = ReplicatedValkey(tmp_path, _address(), _address(), [_address() for _ in range(3)])
    with g:
        pids = g.pids
        assert len(pids) == 5
        assert g.folder is not None
        found = list(g.folder.rglob("*.conf"))
        assert len(found) == 5
        for conf in found:
            assert stat.S_IMODE(conf.stat().st_mode) == 0o600, conf
            assert stat.S_IMODE(conf.parent.stat().st_mode) == 0o700, conf.parent
            # Only hashes of the users' passwords, but masterauth and auth-pass are clear:
            # the file is the one place they are kept.
            assert parse_sentinel_url(g.sentinel_url).password not in conf.read_text()
        if os.geteuid() == 0:
            assert all(conf.stat().st_uid != 0 for conf in found)  # the service account's
    assert g.pids == []
    assert not any(pid_alive(pid) for pid in pids)


@pytest.mark.slow
def test_a_group_that_fails_to_start_stops_what_it_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Address("127.0.0.1", taken.getsockname()[1])
        g = ReplicatedValkey(tmp_path, _address(), _address(), [_address(), _address(), busy])
        with pytest.raises(RuntimeError, match=r"exited at start; see .*sentinel-3\.log"), g:
            pass
        started = [m for m in [*g.nodes, *g.sentinels] if m.name != "sentinel-3"]
        assert all(m.proc is None for m in started)
    assert g.pids == []


def _write(client: redis.Redis, key: str, tries: int) -> int:
    """Write `key` through `client`, retrying on the errors a failover causes; the tries
    it took."""
    for attempt in range(1, tries + 1):
        try:
            client.set(key, "1")
            return attempt
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                redis.exceptions.ReadOnlyError):  # fmt: skip
            time.sleep(0.2)
    raise AssertionError(f"no write of {key} in {tries} tries")


@pytest.mark.slow
def test_the_replica_is_promoted_and_the_same_client_follows(group: ReplicatedValkey) -> None:
    client = sync_client(group.sentinel_url, socket_timeout=2, socket_connect_timeout=1)
    try:
        client.set("before", "1")
        replica = sync_client(group.node_url("valkey-2"))
        eventually(lambda: replica.get("before") == b"1", timeout=10, what="replicated")
        replica.close()

        killed, at = group.kill_primary()
        assert killed == "valkey-1"
        promoted = group.wait_primary(other_than=killed, timeout=30)
        assert promoted == "valkey-2"
        assert time.monotonic() - at < 30
        tries = _write(client, "after", tries=50)  # the same client object
        assert tries <= 50
        assert client.get("before") == b"1"  # the replica had it: nothing lost
        new = sync_client(group.sentinel_url, socket_timeout=2)
        try:
            new.set("new client", "1")
            address = group.nodes[1].address
            assert new.connection_pool.get_master_address() == (address.host, address.port)
        finally:
            new.close()
        # The old primary, started again, is made a replica of the new one and catches up.
        group.restart(killed)
        assert group.primary() == "valkey-2"
        old = sync_client(group.node_url(killed))
        try:
            eventually(lambda: old.get("after") == b"1", timeout=10, what="caught up")
            with pytest.raises(redis.exceptions.ReadOnlyError):
                old.set("on the old primary", "1")
        finally:
            old.close()
    finally:
        client.close()


def _order(client: httpx.Client) -> object:
    """Post an order, retrying while the API answers 503 (Redis away); its job id."""
    for _ in range(100):
        res = client.post("/orders", json={"product": "Laptop", "quantity": 1, "price": 10})
        if res.status_code == 202:
            return res.json()["jobId"]
        assert res.status_code == 503, res.text
        time.sleep(0.2)
    raise AssertionError("the API answered 503 for 20 s")


@pytest.mark.slow
def test_the_api_and_a_worker_follow_a_failover(
    settings: Settings, clean: None, group: ReplicatedValkey
) -> None:
    """The API and a worker, given the Sentinel URL as REDIS_URL, work on before and after
    the primary is killed (the same processes: their clients follow the new primary)."""
    through = Settings(group.sentinel_url, settings.database_url)
    sup = Supervisor(through)
    try:
        sup.start_api()
        sup.start_worker()
        with httpx.Client(base_url=sup.api_url or "", timeout=10) as client:
            first = post_order(client)["jobId"]
            eventually(lambda: job(client, first)["status"] == "completed", timeout=15)
            killed, _ = group.kill_primary()
            group.wait_primary(other_than=killed, timeout=30)
            second = _order(client)
            eventually(lambda: job(client, second)["status"] == "completed", timeout=30)
        assert all(child.alive() for child in sup.children.values())
    finally:
        sup.close()


@pytest.fixture
def lab_host() -> Iterator[tuple[str, str]]:
    """A network namespace joined to this one by a veth pair: (its name, its address)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name, subnet = f"mqlt{os.getpid()}", f"10.231.{os.getpid() % 250}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", name)
    try:
        ip("link", "add", f"{name}h", "type", "veth", "peer", "name", f"{name}n")
        ip("link", "set", f"{name}n", "netns", name)
        ip("addr", "add", f"{subnet}.1/24", "dev", f"{name}h")
        ip("link", "set", f"{name}h", "up")
        ip("-n", name, "addr", "add", f"{subnet}.2/24", "dev", f"{name}n")
        ip("-n", name, "link", "set", f"{name}n", "up")
        # Without lo, a process in the namespace cannot reach the namespace's own address
        # (the five members share one host here): the Sentinels saw the primary down.
        ip("-n", name, "link", "set", "lo", "up")
        yield name, f"{subnet}.2"
    finally:
        ip("netns", "del", name)  # takes the veth pair with it


@pytest.mark.slow
def test_a_group_runs_inside_a_lab_host(tmp_path: Path, lab_host: tuple[str, str]) -> None:
    netns, host = lab_host
    addresses = [Address(host, 17000 + i, netns) for i in range(5)]
    with ReplicatedValkey(tmp_path, addresses[0], addresses[1], addresses[2:]) as g:
        client = sync_client(g.sentinel_url, socket_timeout=2)
        try:
            client.set("in the lab host", "1")
            assert client.connection_pool.get_master_address() == (host, 17000)
        finally:
            client.close()
        inside = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
        assert sorted(map(int, inside.stdout.split())) == sorted(g.pids)
    inside = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    assert inside.stdout.split() == []
