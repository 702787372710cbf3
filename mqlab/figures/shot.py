"""One request the load generator sent, as the figures read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shot:
    """One request: what was sent when, what came back, how long it took."""

    index: int
    status: int  # HTTP status; 0 when no response was received (see error)
    sent_at: float  # time.time() epoch seconds when the request was written
    latency: float  # seconds from the write to the last byte of the response
    order_id: int | None
    job_id: str | None
    error: str | None  # None for any complete HTTP response (also a 4xx/5xx)
