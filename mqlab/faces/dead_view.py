"""What `mqlab dead list` and `mqlab dead show` print: rich tables that fit the terminal.

Cells that come from outside (errors, products, queue entries) are Text, never markup, and
one line each (messages.one_line) before the table wraps them: ids, products and errors are
read whole, on as many lines as they need.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mqlab.faces.status_view import age, dead_letters_table
from mqlab.protocol import keys
from mqlab.protocol.messages import DeadLetter, one_line
from mqlab.system.dead_letters import DeadList, JobStory

#: Borders and padding of a table of n columns: 3 per column and one more.
_FRAME = 3


def _cell(text: str | None, limit: int = 300) -> Text:
    return Text(one_line(text or "", limit) or "-")


def _columns(
    table: Table,
    width: int,
    fixed: dict[str, list[str]],
    flexible: dict[str, list[Text]],
) -> None:
    """Add the fixed columns at the width their header and cells need, then the flexible
    ones in what is left of `width`: each but the last at most a third of it, or its longest
    word if that is more (up to half; or what it needs, if less), the last (the error, what a
    person reads) all the rest. Flexible cells wrap onto more lines rather than lose their
    end (an id, a product, an error is read whole), and every cell is one line of text before
    that (messages.one_line).

    Measured rather than left to Rich: once a table is too wide, Rich shrinks every no-wrap
    column alike, the short ones (a job id, an age) too.
    """

    def needed(name: str, cells: list[str] | list[Text]) -> int:
        return max([len(name), *(len(c) for c in cells)])

    used = _FRAME * (len(fixed) + len(flexible)) + 1
    for name, cells in fixed.items():
        size = needed(name, cells)
        used += size
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=size)
    left = max(8 * len(flexible), width - used)
    *first, last = flexible
    for name in first:
        # At least its longest word (up to half of what is left), so that a word is not cut.
        word = max((len(w) for c in flexible[name] for w in str(c).split()), default=0)
        share = max(left // 3, min(word, left // 2))
        size = max(len(name), min(needed(name, flexible[name]), share))
        left -= size
        table.add_column(name, overflow="fold", max_width=size)
    table.add_column(last, overflow="fold", max_width=max(8, left))
    for row in zip(*fixed.values(), *flexible.values(), strict=True):
        table.add_row(*row)


def dead_jobs_table(dead: DeadList, width: int, now: float) -> Table:
    """The dead jobs, newest first: job, order, attempts, when, product, last error."""
    title = f"dead jobs ({len(dead.jobs)} of {dead.dead_jobs}, newest first)"
    table = Table(title=title, title_justify="left")
    jobs = dead.jobs
    fixed = {
        "job": [one_line(j.job_id, 40) for j in jobs],
        "order": [str(j.order_id) for j in jobs],
        "attempts": [str(j.attempts) for j in jobs],
        "buried": [age(j.finished_at.timestamp() if j.finished_at else None, now) for j in jobs],
    }
    flexible = {
        "product": [_cell(j.product) for j in jobs],
        "last error": [_cell(j.last_error) for j in jobs],
    }
    _columns(table, width, fixed, flexible)
    return table


def others_table(letters: list[DeadLetter], total: int, width: int, now: float) -> Table:
    """The orders:dead entries that are not a job's, with their reasons."""
    table = dead_letters_table(letters, total, now, width)
    table.title = f"other dead letters, not jobs ({len(letters)}, newest first; {keys.DEAD})"
    return table


def render_list(dead: DeadList, width: int = 80, now: float | None = None) -> Group:
    """`mqlab dead list`."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = []
    parts.append(dead_jobs_table(dead, width, now) if dead.jobs else Text("No dead jobs."))
    if dead.others:
        parts.append(others_table(dead.others, dead.entries, width, now))
    else:
        parts.append(Text(f"No other dead letters on {keys.DEAD}."))
    if dead.jobs:
        parts.append(Text("`mqlab dead show JOB` tells a job's story; `replay` queues it again."))
    return Group(*parts)


def _when(iso: str | None) -> str:
    """An ISO-8601 UTC time as `YYYY-MM-DD HH:MM:SS` (UTC), or -."""
    if not iso:
        return "-"
    return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S")


#: Attempts whose end nobody recorded: their finishedAt is when another process found them
#: unfinished, not when their work stopped.
UNENDED = ("crashed", "reclaimed")


def _took(attempt: dict[str, Any]) -> str:
    started, finished = attempt["startedAt"], attempt["finishedAt"]
    if not started or not finished or attempt["outcome"] in UNENDED:
        return "-"  # not known: a crash records no end (see _what_happened)
    took = dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)
    return f"{took.total_seconds():.1f}s"


def _what_happened(attempt: dict[str, Any], after: dict[str, Any] | None, dead: bool) -> str:
    """The error an attempt recorded; for one that never ended, what its row tells first:
    who ran it, when it was found unfinished, and by whom (the attempt that took it over)."""
    error = attempt["error"] or ""
    if attempt["outcome"] not in UNENDED:
        return error
    return _unended(attempt, after, dead) + (f" ({error})" if error else "")


def _unended(attempt: dict[str, Any], after: dict[str, Any] | None, dead: bool) -> str:
    found = _clock(attempt["finishedAt"])
    if attempt["outcome"] == "reclaimed":
        return (
            f"worker {attempt['workerId']} was gone and no queue held the job: the reconciler "
            f"queued it again at {found}"
        )
    text = (
        f"no end recorded: worker {attempt['workerId']} did not finish it (died, or was "
        f"presumed dead); found unfinished at {found}"
    )
    if after is not None and after["startedAt"] == attempt["finishedAt"]:
        return f"{text} by {after['workerId']}, who took it over"
    if after is None and dead:
        return f"{text}, with no attempts left: the job is dead"
    return text


def _job_table(job: dict[str, Any], order: dict[str, Any] | None, width: int) -> Table:
    table = Table(title=f"job {one_line(job['id'], 60)}", title_justify="left", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold", max_width=max(20, width - 20))
    rows: list[tuple[str, str | Text]] = [
        ("status", job["status"]),
        ("attempts", str(job["attempts"])),
        ("last error", _cell(job["lastError"], 2000)),
        ("worker", _cell(job["workerId"])),
        ("enqueued", _when(job["enqueuedAt"])),
        ("finished", _when(job["finishedAt"])),
    ]
    if job["nextAttemptAt"]:
        rows.append(("next attempt", _when(job["nextAttemptAt"])))
    if order is not None:
        what = f"#{order['id']} {order['quantity']} x {order['product']} at {order['price']}"
        rows.append(("order", _cell(what)))
        rows.append(("order status", order["status"]))
    for name, value in rows:
        table.add_row(name, value)
    return table


def _clock(iso: str | None) -> str:
    """The time of day of an ISO-8601 UTC time (the job's table gives the dates)."""
    return dt.datetime.fromisoformat(iso).strftime("%H:%M:%S") if iso else "-"


def _number(attempt: int, replayed_after: int) -> str:
    """An attempt's number among all of the job's attempts, and, after a replay, its number
    since the replay (since_replay: what a worker's --max-attempts counts)."""
    if not replayed_after or attempt <= replayed_after:
        return str(attempt)
    return f"{attempt} ({attempt - replayed_after})"


def _attempts_table(
    attempts: list[dict[str, Any]], width: int, replayed_after: int, dead: bool
) -> Table:
    title = "attempts (UTC)"
    if replayed_after:
        title += (
            f"; replayed after attempt {replayed_after}: (n) is an attempt's number since "
            "the replay, which a worker's --max-attempts counts"
        )
    table = Table(title=title, title_justify="left")
    following = [*attempts[1:], None]
    fixed = {
        "#": [_number(a["attempt"], replayed_after) for a in attempts],
        "started": [_clock(a["startedAt"]) for a in attempts],
        "took": [_took(a) for a in attempts],
        "outcome": [a["outcome"] for a in attempts],
    }
    flexible = {
        "worker": [_cell(a["workerId"]) for a in attempts],
        "error / what happened": [
            _cell(_what_happened(a, after, dead))
            for a, after in zip(attempts, following, strict=True)
        ],
    }
    _columns(table, width, fixed, flexible)
    return table


def render_story(story: JobStory, width: int = 80, now: float | None = None) -> Group:
    """`mqlab dead show JOB`: the job and its order, every attempt, its dead letters."""
    now = time.time() if now is None else now
    parts: list[RenderableType] = [_job_table(story.job, story.order, width)]
    if story.attempts:
        dead = story.job["status"] == "dead"
        parts.append(_attempts_table(story.attempts, width, story.replayed_after, dead))
    else:
        parts.append(Text("No attempts yet."))
    if story.letters:
        table = dead_letters_table(story.letters, len(story.letters), now, width)
        table.title = f"its dead letters ({len(story.letters)}; {keys.DEAD})"
        parts.append(table)
    elif story.job["status"] == "dead":
        parts.append(Text(f"No entry of it on {keys.DEAD}."))
    return Group(*parts)
