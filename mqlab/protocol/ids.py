"""Ids: the job id's format (made by PostgreSQL, read by the TUI) and the order of worker ids.

A job id is `job-<order id>-<epoch ms>`, as in the kata (`job-1-1700000000000`). The API's
INSERT makes it in SQL (one statement writes the order and its job), so the format is given
here twice, side by side: as SQL (job_id_sql) and in Python (job_id, parse_job_id);
tests/test_protocol.py checks that PostgreSQL's agrees with Python's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

JOB_ID_PREFIX = "job-"
#: The epoch suffix is milliseconds: 13 digits today, 10 at least for any date after 1970-04.
_JOB_ID = re.compile(r"job-(\d+)-(\d{10,})")
_JOB_ID_IN_TEXT = re.compile(r"\b(job-\d+)-\d{10,}\b")


class JobId(NamedTuple):
    order_id: int
    epoch_ms: int


def job_id(order_id: int, epoch_ms: int) -> str:
    """The id of an order's job, as the API's INSERT makes it."""
    return f"{JOB_ID_PREFIX}{order_id}-{epoch_ms}"


def job_id_sql(order_id: str, epoch_ms: str) -> str:
    """job_id() as a SQL expression of two SQL expressions (a column, a parameter)."""
    return f"'{JOB_ID_PREFIX}' || {order_id} || '-' || {epoch_ms}"


def parse_job_id(text: str) -> JobId | None:
    """(order id, epoch ms) of a job id in our format; None for any other text (a job id
    pushed by hand, with `redis-cli`, can be anything)."""
    match = _JOB_ID.fullmatch(text)
    return JobId(int(match.group(1)), int(match.group(2))) if match else None


def short_job_id(text: str) -> str:
    """job-12-1700000000000 -> job-12: the epoch suffix only makes a column wider. Any other
    text is returned as it is."""
    parsed = parse_job_id(text)
    return f"{JOB_ID_PREFIX}{parsed.order_id}" if parsed else text


def shorten_job_ids(line: str) -> str:
    """short_job_id() of every job id in a line of text (a log line)."""
    return _JOB_ID_IN_TEXT.sub(r"\1", line)


_LAB_WORKER = re.compile(r"w(\d+)")
#: A lab worker on one of the lab's hosts: `<host>-w<n>` (hostc-w3).
_HOST_WORKER = re.compile(r"(.+)-w(\d+)")
_DIGITS = re.compile(r"(\d+)")


def _natural(text: str) -> tuple[str | int, ...]:
    """Text and numbers alternating, the numbers as numbers: "vm-12" -> ("vm-", 12, "").
    re.split with a group always starts (and ends) with text, so the parts at one position
    are of one type, and any two of these tuples compare."""
    return tuple(
        int(part) if i % 2 else part.casefold() for i, part in enumerate(_DIGITS.split(text))
    )


def worker_sort_key(worker_id: str) -> tuple[int, tuple[str | int, ...], int, str]:
    """Natural order of worker ids: the lab's w1, w2, ..., w10 first; then the lab's workers
    on its hosts, `<host>-w<n>`, by host (hosta-w2 before hostb-w1) and then by number; then
    every other id (a worker started by hand is `<host>-<pid>`) with its numbers compared as
    numbers."""
    if match := _LAB_WORKER.fullmatch(worker_id):
        return (0, (), int(match.group(1)), worker_id)
    if match := _HOST_WORKER.fullmatch(worker_id):
        return (1, _natural(match.group(1)), int(match.group(2)), worker_id)
    return (2, _natural(worker_id), 0, worker_id)


def host_by_prefix(worker_id: str, hosts: Iterable[str]) -> str | None:
    """The host of `hosts` that a worker id starts with (`<host>-w3`, `<host>-<pid>`: a lab
    host's worker, or one started by hand there); the longest such host, so that `a-b-w1` is
    `a-b`'s, not `a`'s. None when it starts with none of them."""
    found = [host for host in hosts if worker_id.startswith(f"{host}-")]
    return max(found, key=len) if found else None
