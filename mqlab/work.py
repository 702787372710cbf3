"""The simulated work a job does: sleep (I/O-bound, as in the kata) or spin the CPU."""

from __future__ import annotations

import asyncio
import time

WORK_KINDS = ("sleep", "cpu")


def spin(seconds: float) -> int:
    """Burn `seconds` of this thread's CPU time; returns the iterations (so it is not elided).

    CPU time, not wall time: a CPU-bound job is a fixed amount of work, so when there are more
    busy workers than cores each job takes longer, which is what the scaling suite shows.
    """
    deadline = time.thread_time() + seconds
    n = 0
    while time.thread_time() < deadline:
        for _ in range(1000):
            n += 1
    return n


async def do_work(kind: str, seconds: float) -> None:
    """Sleep without holding the loop, or spin in a thread so heartbeats keep beating."""
    if seconds <= 0:
        return
    if kind == "cpu":
        await asyncio.to_thread(spin, seconds)
    else:
        await asyncio.sleep(seconds)
