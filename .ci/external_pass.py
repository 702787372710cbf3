"""Run the test suite against the machine's own Redis (6379) and PostgreSQL (5432), if any.

It never touches their data: it picks a Redis DB number that is empty, creates a PostgreSQL
database of its own, and removes both when done. Where the servers do not answer, it says so
and skips the pass (exit 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import psycopg
import redis

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def empty_redis_db() -> int | None:
    """The highest-numbered DB with no keys, or None when Redis does not answer."""
    try:
        for db in range(15, 0, -1):
            client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=2)
            try:
                if client.dbsize() == 0:
                    return db
            finally:
                client.close()
    except (redis.RedisError, OSError) as exc:
        print(f"system Redis on {REDIS_PORT} does not answer ({exc}): skipping this pass")
        return None
    print("every Redis DB 1-15 holds keys: skipping rather than touching them")
    return None


def main() -> int:
    db = empty_redis_db()
    if db is None:
        return 0
    name = f"mqlab_ci_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        print(f"system PostgreSQL on 5432 does not answer ({exc}): skipping this pass")
        return 0
    env = dict(os.environ)
    env["REDIS_URL"] = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    env["DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{name}"
    print(f"REDIS_URL={env['REDIS_URL']} DATABASE_URL={env['DATABASE_URL']}")
    try:
        return subprocess.call([sys.executable, "-m", "pytest", *sys.argv[1:]], env=env)
    finally:
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        client.flushdb()
        client.close()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        print(f"removed Redis DB {db}'s keys and database {name}")


if __name__ == "__main__":
    sys.exit(main())
