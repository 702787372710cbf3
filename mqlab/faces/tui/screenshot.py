"""Save a screenshot of a real session: `python -m mqlab.faces.tui.screenshot [docs/tui.svg]`.

It runs the TUI headless at 160x48 on the real stack (embedded servers unless REDIS_URL and
DATABASE_URL are set), runs the kata's table at 0.5 s per job, fires ten orders at the four
workers the last row left, and saves the screen (SVG, Textual's own) while they are worked off.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

from textual.pilot import Pilot

from mqlab.faces.tui.main import build
from mqlab.faces.tui.panels import WorkersTable
from mqlab.protocol.events import WorkerState

SIZE = (160, 48)


async def _until(pilot: Pilot[None], check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{check.__name__} not true within {timeout} s")
        await pilot.pause(0.1)


async def shoot(path: Path) -> None:
    app, lab = build(workers=2, job_seconds=0.5, handle_signals=False)
    try:
        async with app.run_test(size=SIZE) as pilot:

            def idle() -> bool:
                frame = app.frame
                return (
                    lab.state == "up"
                    and frame is not None
                    and sum(w.state == WorkerState.IDLE for w in frame.workers) >= 2
                )

            await _until(pilot, idle, 120)
            await pilot.press("R")
            await _until(pilot, lambda: app.running is None, 120)
            await pilot.pause(1.0)
            # The cursor on a live worker, as a person about to stop or kill one would have it.
            table = app.query_one(WorkersTable)
            live = [
                i
                for i, key in enumerate(table.cells_shown)  # the table's rows, hosts' lines too
                if key in table.rows_shown and table.rows_shown[key].state != WorkerState.DEAD
            ]
            table.move_cursor(row=live[0] if live else 0)
            await pilot.press("f")
            await pilot.pause(1.1)  # two of the three waves done, the third under way
            app.clear_notifications()
            await pilot.pause(0.2)
            app.save_screenshot(path.name, str(path.parent))
    finally:
        lab.close()


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/tui.svg")
    path.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(shoot(path))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
