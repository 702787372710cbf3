"""Small helpers the tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

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
