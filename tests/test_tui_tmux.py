"""`mqlab tui` in a real terminal: tmux runs it, the test presses keys, reads the screen with
capture-pane, leaves (q, Ctrl-C or SIGTERM) and checks that no process it started is left.

Each test uses a tmux server of its own (-S), so a person's tmux sessions are never touched.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from mqlab.settings import Settings
from tests.helpers import eventually

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"
)
MQLAB = Path(sys.executable).parent / "mqlab"


class Tmux:
    """One detached session on a private tmux server (its socket in a temp dir of the test)."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def start(self, command: str, width: int, height: int) -> None:
        self("new-session", "-d", "-s", "lab", "-x", str(width), "-y", str(height), command)

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "lab")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "lab", *keys)

    def pane_pid(self) -> int:
        return int(self("display-message", "-p", "-t", "lab", "#{pane_pid}").strip())

    def wait_for(self, check: Callable[[str], object], timeout: float = 30) -> str:
        """The screen once check(screen) is true; fails after `timeout` s with the last one."""
        last = ""

        def showing() -> str:
            nonlocal last
            last = self.screen()
            return last if check(last) else ""

        try:
            return eventually(
                showing, timeout, interval=0.1, what="the screen showing it (the last screen below)"
            )
        except AssertionError as error:
            raise AssertionError(f"{error}\n{last}") from None

    def close(self) -> None:
        subprocess.run(["tmux", "-S", str(self.socket), "kill-server"], capture_output=True)


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def idle_workers(screen: str) -> set[str]:
    return set(re.findall(r"\b(w\d+)\s+\d+\s+idle\b", screen))


@pytest.fixture
def tmux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tmux]:
    # A short path: a unix socket's path must stay under ~100 bytes.
    session = Tmux(tmp_path_factory.mktemp("tmux") / "sock")
    yield session
    session.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("size", "way_out"), [((100, 30), "q"), ((80, 24), "C-c"), ((160, 48), "SIGTERM")]
)
def test_tui_in_a_terminal(
    settings: Settings, clean: None, tmux: Tmux, size: tuple[int, int], way_out: str
) -> None:
    """`mqlab tui` in a real terminal (tmux) at 100x30, 80x24 and 160x48: it draws, fires, adds a
    worker, and leaves by q, Ctrl-C or SIGTERM with no process left.

    Slow by design (6-9 s each): a real terminal, a real lab, waited for on screen."""
    env = shlex.join([f"REDIS_URL={settings.redis_url}", f"DATABASE_URL={settings.database_url}"])
    # exec: the pane's process is the TUI itself, so its pid is the one to watch.
    tmux.start(f"exec env {env} {MQLAB} tui --workers 2 --job-seconds 0.2", *size)
    # Up: the header, both workers idle, and the footer with the keys that need the stack
    # (one line at 80 columns too).
    screen = tmux.wait_for(
        lambda s: "API up" in s and idle_workers(s) == {"w1", "w2"} and "f Fire" in s, 60
    )
    assert "q Quit" in screen and "? Help" in screen
    tui = psutil.Process(tmux.pane_pid())
    assert "tui" in tui.cmdline()
    family = {p.pid for p in tui.children(recursive=True)}
    assert len(family) >= 3  # the API and two workers

    if way_out == "q":
        tmux.keys("f")
        tmux.wait_for(lambda s: re.search(r"completed\s+10\b", s), 30)
        tmux.keys("a")
        tmux.wait_for(lambda s: idle_workers(s) == {"w1", "w2", "w3"}, 30)
        family |= {p.pid for p in tui.children(recursive=True)}
        tmux.keys("q")
    elif way_out == "C-c":
        tmux.keys("C-c")
    else:
        os.kill(tui.pid, signal.SIGTERM)

    eventually(lambda: not running(tui.pid), 30, interval=0.1, what=f"the TUI leaving on {way_out}")
    assert not [pid for pid in family if running(pid)], "processes left running"


@pytest.mark.slow
def test_tui_faults_in_a_terminal(settings: Settings, clean: None, tmux: Tmux) -> None:
    """Kata 4 in a real terminal: set a failure rate (the workers restart with it) and a poison
    share, fire, and see failed attempts on screen and the poison order dead with its reason."""
    env = shlex.join([f"REDIS_URL={settings.redis_url}", f"DATABASE_URL={settings.database_url}"])
    tmux.start(f"exec env {env} {MQLAB} tui --workers 2 --job-seconds 0.2", 100, 30)
    tmux.wait_for(lambda s: "API up" in s and idle_workers(s) == {"w1", "w2"}, 60)
    tui = psutil.Process(tmux.pane_pid())
    family = {p.pid for p in tui.children(recursive=True)}
    for rate in ("10%", "30%", "50%"):
        tmux.keys("e")  # each restarts the workers; the panel says the rate once they are up
        tmux.wait_for(
            lambda s, r=rate: f"workers fail {r}" in s and idle_workers(s) == {"w1", "w2"}
        )
        family |= {p.pid for p in tui.children(recursive=True)}
    tmux.keys("P")
    tmux.wait_for(lambda s: "next batches 10% poison" in s)
    tmux.keys("f")  # 9 orders, and 1 poison
    # The count (PostgreSQL) and the dead letter with its reason (Redis) come from different
    # reads: under load one screen had the count and not yet the letter.
    tmux.wait_for(
        lambda s: (
            re.search(r"failed\s+attempts\s+[1-9]", s)
            and re.search(r"\bdead 1\b", s)
            and "poison order: product 'poison #0'" in s
        ),  # the dead letter, with its reason
        60,
    )
    family |= {p.pid for p in tui.children(recursive=True)}
    tmux.keys("q")
    eventually(lambda: not running(tui.pid), 30, interval=0.1, what="the TUI leaving on q")
    assert not [pid for pid in family if running(pid)], "processes left running"
