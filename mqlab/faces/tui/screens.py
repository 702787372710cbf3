"""Modal screens: help, yes/no confirmation, and the log's process filter."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Markdown, OptionList, Static
from textual.widgets.option_list import Option

from mqlab.faces.tui.lanes import (
    BACKOFF_MARK,
    CUT_MARK,
    DEAD_MARK,
    FAILED_MARK,
    KILL_MARK,
    RETRY_MARK,
)
from mqlab.protocol import keys

#: Seconds until a killed worker's job is requeued (its heartbeat's time to live).
_TTL = keys.HEARTBEAT_TTL

HELP = f"""\
# mqlab tui

A live lab of the producer-consumer pattern: an HTTP API enqueues orders on Redis, worker
processes take them, PostgreSQL records every job. Everything on screen is sampled 5 times a
second from Redis, PostgreSQL, the `mqlab:events` stream and the supervisor.

| key | what it does |
|---|---|
| `f` | fire a batch of orders at the API (all at once) |
| `+` / `-` | a bigger / smaller batch (1, 5, 10, 20, 50, 100, 500, 1000) |
| `a` | add a worker |
| `s` | stop the selected worker: SIGTERM, it finishes its job and exits |
| `k` | kill the selected worker: SIGKILL (asks first); its job is requeued within ~{_TTL} s |
| `r` | run the selected experiment row |
| `R` | run every experiment row |
| `c` | cancel the running experiment |
| `e` | failure rate of the lab's workers, queued jobs included: 0 → 10 → 30 → 50 → 0 % |
| `P` | poison share of the next batches: 0 → 10 → 30 % (products containing "poison") |
| `L` | replay the dead letters: every dead job queued again (twice queues once) |
| `F` | flush Redis: FLUSHALL (asks first); the reconciler queues the jobs again |
| `D` | stop PostgreSQL for a few seconds (asks first; only the lab's own embedded server) |
| `X` | reset the data: no orders, no jobs, nothing queued (asks first) |
| `p` | pause / resume the refresh |
| `/` | filter the log by process |
| `tab` | move between the workers, experiments and log |
| `?` | this help |
| `q`, `ctrl+c` | quit: stops every process the lab started |

The footer shows only the keys usable now: stopping and killing need a live worker under the
cursor of the workers table; while an experiment runs, only cancel, pause, help and quit. In a
narrow terminal it shows the first of them, and help and quit: this list has them all. What
the lab has to say (orders fired, a run's verdicts, an error) shows for a few seconds in the
top line, and stays in the log.

**Experiments and the workers you add.** An experiment measures a row with exactly its number
of workers, so running one first stops (SIGTERM) every live worker, those you added included;
then the runner starts the pool each row needs, resets the data, fires the row's orders and
waits for the last job. The pool stays up afterwards and you can keep firing at it. Each run
resets the data, as `mqlab run-experiment` does.

**Workers table.** `dead` means the process exited (the row stays two minutes); `*` after an
id marks a worker this lab did not start (another terminal's, on the same Redis): while one
runs, `r` and `R` refuse, before touching the lab's own workers. A long id is shortened
around an ellipsis.

**Timeline.** A lane per worker process since the lab started: a worker id used again by a
new process gets a lane of its own. A job that did not complete (its worker killed, or the
job deleted by a reset) ends with `{CUT_MARK}`. Failures (Kata 4): an attempt that failed
ends with `{FAILED_MARK}`, its backoff runs on as `{BACKOFF_MARK}` until the retry is due, a
retry starts with `{RETRY_MARK}`, an attempt that made its job dead ends with `{DEAD_MARK}`,
and `{KILL_MARK}` marks where a worker was killed (SIGKILL).

**Failures panel.** Jobs retrying and dead (PostgreSQL), retries waiting out their backoff
in `orders:delayed` and when the next is due, the dead letters on `orders:dead` with the
newest ones and their reasons, the failure rate the lab's workers run with, and the poison
share of the next batches.

Press `escape` or `?` to close.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,question_mark,q", "dismiss", "Close", show=True),
    ]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-body"):
            yield Markdown(HELP)

    def on_mount(self) -> None:
        body = self.query_one("#help-body")
        body.border_title = "help"
        body.border_subtitle = "escape closes · arrows scroll"
        body.focus()  # arrows and page keys scroll it


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question: `y` or Enter on Yes confirms; `n` or Escape declines."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes", show=True),
        Binding("n,escape", "answer(False)", "No", show=True),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-body"):
            yield Static(self.question, id="question")
            with Horizontal(id="confirm-buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class LogFilterScreen(ModalScreen[str | None]):
    """Pick the process whose lines the log shows (or all of them)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=True)]

    def __init__(self, processes: list[str], current: str) -> None:
        super().__init__()
        self.processes = processes
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="filter-body"):
            yield Static("Show the log lines of:", id="filter-title")
            options = [Option("all processes", id="")]
            options += [Option(name, id=name) for name in self.processes]
            yield OptionList(*options, id="filter-options")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        choices = ["", *self.processes]
        options.highlighted = choices.index(self.current) if self.current in choices else 0
        options.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id or "")

    def action_cancel(self) -> None:
        self.dismiss(None)
