"""SIGTERM as a clean stop: the same way out as Ctrl-C, through every `finally`."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Inside the block, SIGTERM raises KeyboardInterrupt as Ctrl-C does, so that whatever
    the command started is stopped on the way out rather than left behind by a sudden death.

    SIGINT raises it too even when the process started with SIGINT ignored (a background job
    of a script): `kill -INT` must unwind the same way. Both handlers are restored after.
    Only the main thread may set handlers, so the commands call it there.
    """
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        signal.signal(signal.SIGINT, previous_int)
