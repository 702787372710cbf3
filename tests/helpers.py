"""Small helpers the tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import psycopg

from mqlab.protocol.messages import encode_message

T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 10, interval: float = 0.05) -> T:
    """Return check()'s first truthy value, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(interval)


def post_order(client: httpx.Client, product: str = "Laptop") -> dict[str, object]:
    res = client.post("/orders", json={"product": product, "quantity": 1, "price": 10})
    assert res.status_code == 202, res.text
    body: dict[str, object] = res.json()
    return body


def job(client: httpx.Client, job_id: object) -> dict[str, object]:
    body: dict[str, object] = client.get(f"/jobs/{job_id}").json()
    return body


def insert_job(url: str, job_id: str) -> bytes:
    """An order and its job written as the API does; the message the API would push."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO orders (product, quantity, price) VALUES ('x', 1, 1) RETURNING id"
        ).fetchone()
        assert row is not None
        conn.execute("INSERT INTO jobs (id, order_id) VALUES (%s, %s)", [job_id, row[0]])
    return encode_message(job_id, row[0], "x")  # enqueuedAt: for people; workers ignore it


def job_status(url: str, job_id: str) -> str | None:
    """The job's status in PostgreSQL (None when there is no such job)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT status FROM jobs WHERE id = %s", [job_id]).fetchone()
    return row[0] if row else None
