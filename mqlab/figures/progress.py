"""What a front end shows while a row runs (the runner reports it; the TUI and run-experiment
draw it): data only, so that the views need not import the runner, which starts processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mqlab.experiments import Row


@dataclass(frozen=True)
class Progress:
    """What a front end shows while a row runs."""

    suite: str
    row: Row
    row_index: int  # 1-based
    rows: int
    run: int  # 1-based
    runs: int
    phase: str  # workers | firing | waiting | done
    done: int = 0
    total: int = 0
    elapsed: float = 0.0
    queue_depth: int = 0


ProgressHandler = Callable[[Progress], None]
