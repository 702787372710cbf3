"""The simulated work a job does: sleep (I/O-bound, as in the kata) or spin the CPU."""

from __future__ import annotations

import asyncio
import math
import time

WORK_KINDS = ("sleep", "cpu")
#: The longest job a worker accepts to simulate: a day. Longer is a typo (and asyncio cannot
#: sleep for times near a float's range).
MAX_JOB_SECONDS = 86_400.0


def check_job_seconds(value: float) -> float:
    """`value` if it is a job time a worker can simulate, else ValueError saying what is."""
    if not (math.isfinite(value) and 0 <= value <= MAX_JOB_SECONDS):
        raise ValueError(f"must be a number of seconds from 0 to {MAX_JOB_SECONDS:g}, not {value}")
    return value


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
