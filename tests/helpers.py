"""Small helpers the tests share."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

import httpx
import psycopg

from mqlab.protocol.messages import encode_message

T = TypeVar("T")


def eventually(
    check: Callable[[], T], timeout: float = 10, interval: float = 0.05, what: str = ""
) -> T:
    """Return check()'s first truthy value, or fail after `timeout` seconds saying `what`
    did not happen (the check's name when `what` is not given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise _not_within(timeout, what or _name(check), value)
        time.sleep(interval)


@overload
async def eventually_async(
    check: Callable[[], Awaitable[T]], timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...
@overload
async def eventually_async(
    check: Callable[[], T], timeout: float = ..., interval: float = ..., what: str = ...
) -> T: ...
async def eventually_async(
    check: Callable[[], object], timeout: float = 10, interval: float = 0.05, what: str = ""
) -> object:
    """eventually() for async tests: check may return an awaitable (awaited), and the wait
    between checks is an asyncio.sleep, so the running loop (a Textual app's) goes on."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise _not_within(timeout, what or _name(check), value)
        await asyncio.sleep(interval)


def _name(check: Callable[..., object]) -> str:
    return getattr(check, "__qualname__", repr(check))


def _not_within(timeout: float, what: str, value: object) -> AssertionError:
    return AssertionError(f"did not happen within {timeout:g} s: {what}; last value: {value!r}")


#: The order the tests post unless they say otherwise.
ORDER = {"product": "Laptop", "quantity": 1, "price": 10}


def post_order(client: httpx.Client, product: str = "Laptop") -> dict[str, object]:
    res = client.post("/orders", json={**ORDER, "product": product})
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
