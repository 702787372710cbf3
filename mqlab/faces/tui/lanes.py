"""The live timeline: per worker, the jobs of the last N seconds as bars on a shared time axis,
so that four workers taking ten jobs show as three waves."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from mqlab.faces.tui.model import Frame, HostGroup, JobBar, group_by_host, local_id
from mqlab.faces.tui.panels import short_id
from mqlab.protocol.events import WorkerState
from mqlab.protocol.ids import worker_sort_key

#: Consecutive jobs of a worker alternate colors, or one long bar would hide where they meet.
BAR_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1")
#: A job cut short (its worker killed, the job lost or deleted) ends with this mark.
CUT_MARK, CUT_STYLE = "\N{BOX DRAWINGS LIGHT DIAGONAL CROSS}", "bold #ff5f5f"
#: Kata 4's marks, one cell each (none of East Asian ambiguous width but the box drawings
#: the lanes use already): an attempt that failed and will be retried ends with FAILED_MARK,
#: then its backoff runs on the lane (BACKOFF_MARK, where the worker is otherwise idle) until
#: the retry is due; a retry (attempt 2 and on) starts with RETRY_MARK; an attempt that made
#: its job dead ends with DEAD_MARK; a worker process SIGKILLed shows KILL_MARK where the lab
#: saw it die.
FAILED_MARK, FAILED_STYLE = "!", "bold black on #f2c94c"
BACKOFF_MARK, BACKOFF_STYLE = "\N{BOX DRAWINGS LIGHT TRIPLE DASH HORIZONTAL}", "#f2c94c"
RETRY_MARK, RETRY_STYLE = "\N{CLOCKWISE OPEN CIRCLE ARROW}", "bold black on #f2c94c"
DEAD_MARK, DEAD_STYLE = "\N{CIRCLED DIVISION SLASH}", "bold white on #c0392b"
KILL_MARK, KILL_STYLE = "\N{DOWNWARDS ZIGZAG ARROW}", "bold #ff5f5f"


@dataclass(frozen=True)
class Lane:
    """One worker process's row: its label (the worker's short id) and its bars."""

    label: str
    bars: tuple[JobBar, ...]
    alive: bool
    kills: tuple[float, ...] = ()  # when this process was SIGKILLed (at most once, really)
    worker: str = ""  # the worker's whole id
    ours: bool = True  # started by this lab (else another terminal's: its label ends in `*`)


def lanes(frame: Frame) -> list[Lane]:
    """A lane per worker process: the live ones, and any with a bar in the window. A worker
    id used again by a new process gets a lane of its own, under the old one."""
    live = {(w.id, w.pid): w for w in frame.workers if w.state != WorkerState.DEAD}
    ours = {w.id: w.ours for w in frame.workers}
    bars: dict[tuple[str, int], list[JobBar]] = {key: [] for key in live}
    for bar in frame.bars:
        key = (bar.worker, bar.pid)
        if bar.pid == 0:  # not known: the live process of that id, if any
            key = next((k for k in live if k[0] == bar.worker), key)
        bars.setdefault(key, []).append(bar)
    kills: dict[tuple[str, int], list[float]] = {}
    for kill in frame.kills:
        kills.setdefault((kill.worker, kill.pid), []).append(kill.at)
        bars.setdefault((kill.worker, kill.pid), [])

    def first_seen(key: tuple[str, int]) -> float:
        return min((b.start for b in bars[key]), default=float("inf"))

    order = sorted(bars, key=lambda k: (worker_sort_key(k[0]), k in live, first_seen(k)))
    return [
        Lane(
            short_id(wid, ours.get(wid, True)),
            tuple(bars[(wid, pid)]),
            (wid, pid) in live,
            tuple(kills.get((wid, pid), ())),
            wid,
            ours.get(wid, True),
        )
        for wid, pid in order
    ]


def host_lanes(frame: Frame) -> list[tuple[HostGroup | None, list[Lane]]]:
    """The lanes grouped by host (model.group_by_host), each labelled by its id on that host
    (model.local_id); one group without a host when the workers run on one host."""
    rows = lanes(frame)
    groups = group_by_host(frame, list(dict.fromkeys(lane.worker for lane in rows)))
    if groups is None:
        return [(None, rows)]
    return [
        (g, [replace(lane, label=short_id(local_id(lane.worker, g.host), lane.ours))
             for lane in rows if lane.worker in g.ids])
        for g in groups
    ]  # fmt: skip


def host_line(group: HostGroup, width: int) -> Text:
    """── hosta  4.0 jobs/s ────: the line above a host's lanes."""
    line = Text("── ", style="dim")
    line.append(group.host, style="bold")
    if group.info is not None:
        line.append(f"  {group.info.per_second:.1f}", style="bold")
        line.append(" jobs/s", style="dim")
    line.append(" ")
    line.append("─" * max(0, width - line.cell_len), style="dim")
    line.truncate(width)
    return line


def render_lane(
    bars: list[JobBar],
    start: float,
    span: float,
    width: int,
    now: float,
    kills: tuple[float, ...] = (),
) -> Text:
    """One worker's row: · for idle time, a colored block per job (▓ while it runs), and the
    marks of failures (see FAILED_MARK and the others)."""
    idle = ("·", "dim")
    cells: list[tuple[str, str]] = [idle] * width
    per_cell = span / width

    def cell(at: float) -> int:
        return int((at - start) / per_cell)

    # Backoffs first: the bars drawn next cover them where the worker ran other jobs.
    for bar in bars:
        if bar.ending == "failed" and bar.end is not None and bar.retry_in > 0:
            due = min(now, bar.end + bar.retry_in)
            after = math.ceil((bar.end - start) / per_cell)  # the cell after the bar's last
            for c in range(max(0, after), min(width, math.ceil((due - start) / per_cell))):
                cells[c] = (BACKOFF_MARK, BACKOFF_STYLE)
    for bar in sorted(bars, key=lambda b: b.start):
        end = now if bar.end is None else bar.end
        first = max(0, int((bar.start - start) / per_cell))
        last = min(width, max(first + 1, math.ceil((end - start) / per_cell)))
        color = BAR_COLORS[bar.order % len(BAR_COLORS)]
        glyph = "▓" if bar.end is None else "█"
        label = f"#{bar.order}"
        for c in range(first, last):
            offset = c - first
            # The order number sits inside the bar where it fits, white on the bar's color.
            if last - first > len(label) + 1 and 0 < offset <= len(label):
                cells[c] = (label[offset - 1], f"bold white on {color}")
            else:
                cells[c] = (glyph, color)
        if bar.attempt > 1 and 0 <= first < width:
            cells[first] = (RETRY_MARK, RETRY_STYLE)
        mark = (
            (CUT_MARK, CUT_STYLE) if bar.cut
            else (FAILED_MARK, FAILED_STYLE) if bar.ending == "failed"
            else (DEAD_MARK, DEAD_STYLE) if bar.ending == "dead"
            else None
        )  # fmt: skip
        if mark is not None and 0 < last <= width:
            cells[last - 1] = mark
    for at in kills:
        c = cell(at)
        # Beside the cut mark of the job it held, not over it.
        if 0 <= c < width and cells[c][0] == CUT_MARK:
            c += 1
        if 0 <= c < width:
            cells[c] = (KILL_MARK, KILL_STYLE)
    # One span per run of equal style, not per cell: rendering cost follows the span count.
    text = Text()
    run_chars: list[str] = []
    run_style = cells[0][1] if cells else ""
    for char, style in cells:
        if style != run_style:
            text.append("".join(run_chars), run_style)
            run_chars, run_style = [], style
        run_chars.append(char)
    if run_chars:
        text.append("".join(run_chars), run_style)
    return text


def axis(span: float, width: int) -> Text:
    """-30s ... -15s ... now, under the lanes."""
    line = [" "] * width
    marks = 4
    for k in range(marks + 1):
        seconds = span * (1 - k / marks)
        label = "now" if k == marks else f"-{seconds:.3g}s"
        pos = min(width - len(label), max(0, round(k / marks * width) - len(label) // 2))
        line[pos : pos + len(label)] = label
    return Text("".join(line), style="dim")


class Timeline(Widget):
    """Lanes of job bars; its height follows the number of workers."""

    frame: reactive[Frame | None] = reactive(None, layout=False, always_update=True)

    def show(self, frame: Frame) -> None:
        """Take a new frame; skip the redraw while nothing moves (no bar in the window)."""
        old = self.frame
        before, after = (host_lanes(old) if old is not None else None), host_lanes(frame)
        quiet = not old.bars and not frame.bars and not frame.kills if old is not None else False
        if old is not None and quiet and before == after:
            return
        relayout = before is None or _height(before) != _height(after)
        self.frame = frame
        if relayout:
            self.refresh(layout=True)

    def render(self) -> Text:
        frame = self.frame
        if frame is None:
            return Text("waiting for the first sample ...", style="dim")
        groups = host_lanes(frame)
        rows = [lane for _group, group_lanes in groups for lane in group_lanes]
        label_width = 1 + max([4, *(len(lane.label) for lane in rows)])
        width = max(10, self.size.width - label_width)
        out = Text()
        start = frame.at - frame.timeline_seconds
        for group, group_lanes in groups:
            if group is not None:
                out.append_text(host_line(group, self.size.width))
                out.append("\n")
            for lane in group_lanes:
                # A lane of a process that is gone keeps its bars, its label dimmed.
                style = "bold" if lane.alive else "dim"
                out.append(f"{lane.label:>{label_width - 1}} ", style=style)
                out.append_text(
                    render_lane(
                        list(lane.bars), start, frame.timeline_seconds, width, frame.at, lane.kills
                    )
                )
                out.append("\n")
        if not rows:
            out.append("no worker yet\n", style="dim")
        out.append(" " * label_width)
        out.append_text(axis(frame.timeline_seconds, width))
        return out

    def get_content_height(self, container: object, viewport: object, width: int) -> int:
        frame = self.frame
        return 1 + max(1, _height(host_lanes(frame)) if frame is not None else 1)


def _height(groups: list[tuple[HostGroup | None, list[Lane]]]) -> int:
    """Lines of the lanes and their hosts' lines."""
    return sum(len(group) + (host is not None) for host, group in groups)
