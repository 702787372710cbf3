"""Queue entries: the job message the API pushes and a worker parses, and the dead letter
made of an entry that is not one.

A job message is JSON `{"jobId", "orderId", "enqueuedAt"}` (enqueuedAt: PostgreSQL's ISO-8601
time of the job row, for people reading the queue; workers need only the first two).

A queue entry is whatever bytes someone pushed (`redis-cli LPUSH` takes anything), so
everything that reads one takes bytes and trusts none of them: parsing says what is wrong
instead of raising anything else, and every piece of an entry that goes on to a log line, an
event, a dead letter or a screen is cut to a size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import orjson

#: Larger entries are dead-lettered unread. The API's messages are about 90 bytes; this is
#: the API's own body limit, room enough for fields to come.
MAX_MESSAGE_BYTES = 64 * 1024
#: Longer job ids are refused: the API's are `job-<order id>-<epoch ms>` (about 30
#: characters), and a job id goes into log lines, events, heartbeats and `mqlab status`.
MAX_JOB_ID = 200
#: A dead letter keeps this much of its message (with the message's full size) ...
DEAD_MESSAGE_BYTES = 2048
#: ... and a reason of at most this many characters (an error can quote a whole value).
REASON_CHARS = 300
#: A log line shows this much of a message.
PREVIEW_CHARS = 120


class JobMessage(NamedTuple):
    job_id: str
    order_id: int


def encode_message(job_id: str, order_id: int, enqueued_at: str) -> bytes:
    """The message the API pushes for one job."""
    return orjson.dumps({"jobId": job_id, "orderId": order_id, "enqueuedAt": enqueued_at})


class InvalidMessage(ValueError):
    """A queue entry that is not a job message; the text says why."""


def parse_message(raw: bytes) -> JobMessage:
    """(jobId, orderId) of a queue entry, or InvalidMessage saying what is wrong with it."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"too large: {len(raw)} bytes (at most {MAX_MESSAGE_BYTES})")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        # Checked only here, off the hot path: orjson validates UTF-8 itself, but says so in
        # words about surrogates.
        try:
            raw.decode()
        except UnicodeDecodeError as bad:
            raise InvalidMessage(
                f"not UTF-8 (byte 0x{raw[bad.start]:02x} at {bad.start})"
            ) from None
        raise InvalidMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidMessage("not a JSON object")
    job_id, order_id = data.get("jobId"), data.get("orderId")
    if not isinstance(job_id, str) or not job_id:
        raise InvalidMessage("jobId missing or not a string")
    if len(job_id) > MAX_JOB_ID:
        raise InvalidMessage(f"jobId longer than {MAX_JOB_ID} characters ({len(job_id)})")
    # PostgreSQL's text cannot hold NUL, and a newline in a job id would forge log lines.
    if not job_id.isprintable():
        raise InvalidMessage("jobId has unprintable characters")
    if not isinstance(order_id, int) or isinstance(order_id, bool):
        raise InvalidMessage("orderId missing or not an integer")
    return JobMessage(job_id, order_id)


def one_line(text: str, limit: int) -> str:
    """`text` fit for one log line or table cell: control characters escaped (no forged
    lines, no terminal escapes), at most `limit` characters, an ellipsis where it was cut."""
    if len(text) <= limit and text.isprintable():
        return text
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    if len(text) <= limit and len(escaped) <= limit:
        return escaped
    return escaped[: limit - 1] + "…"


def preview(raw: bytes, limit: int = PREVIEW_CHARS) -> str:
    """The start of a queue entry as one line of text, with its size when it is cut."""
    text = one_line(raw[: limit * 4].decode("utf-8", "backslashreplace"), limit)
    return f"{text} ({len(raw)} bytes)" if len(raw) > limit else text


def dead_letter(
    raw: bytes, reason: str, worker: str, at: float, job_id: str | None = None
) -> bytes:
    """The `orders:dead` entry for a queue entry that could not be worked.

    JSON: `message` is its first DEAD_MESSAGE_BYTES as text (bytes that are not UTF-8 as
    \\xNN escapes), so that a short, valid message is kept exactly; `messageBytes` its full
    size; the reason (cut to REASON_CHARS), the worker and the time; `jobId` when the entry
    is a job's (a dead job: PostgreSQL has it as `dead`, and it can be replayed).
    """
    entry: dict[str, object] = {
        "message": raw[:DEAD_MESSAGE_BYTES].decode("utf-8", "backslashreplace"),
        "messageBytes": len(raw),
        "reason": one_line(reason, REASON_CHARS),
        "workerId": worker,
        "at": at,
    }
    if job_id is not None:
        entry["jobId"] = job_id
    return orjson.dumps(entry)


@dataclass(frozen=True)
class DeadLetter:
    """An `orders:dead` entry as `mqlab status` shows it."""

    at: float | None  # epoch seconds; None when the entry does not say
    worker: str
    reason: str
    message: str  # the start of the message, one line
    size: int  # of the message, in bytes
    job_id: str | None = None  # a dead job's id; None for an entry that is not a job


def read_dead_letter(entry: bytes) -> DeadLetter:
    """An `orders:dead` entry, whoever wrote it: one that is not ours shows as itself."""
    try:
        data = orjson.loads(entry)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("message"), str):
        return DeadLetter(None, "?", "(not an mqlab dead letter)", preview(entry), len(entry))
    at, size = data.get("at"), data.get("messageBytes")
    worker, reason = data.get("workerId"), data.get("reason")
    job_id = data.get("jobId")
    message: str = data["message"]
    return DeadLetter(
        at=float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None,
        worker=one_line(worker, 40) if isinstance(worker, str) else "?",
        reason=one_line(reason, REASON_CHARS) if isinstance(reason, str) else "?",
        message=one_line(message, PREVIEW_CHARS),
        size=size if isinstance(size, int) else len(message.encode("utf-8", "replace")),
        job_id=one_line(job_id, MAX_JOB_ID) if isinstance(job_id, str) else None,
    )
