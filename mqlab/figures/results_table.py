"""The kata's table as data: one row of cells per suite row, and one for the API.

The markdown report, `mqlab run-experiment` and the TUI's experiments table lay these rows
out; none of them formats a figure, words a verdict or picks its colour on its own. The cells
are short enough for all three to fit 80 columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mqlab.experiments import Row, Suite
from mqlab.figures.ledger import Ledger
from mqlab.figures.results import ApiVerdict, RowResult, SuiteResult, Verdict
from mqlab.figures.stats import HEADLINE, label

#: The API's row, the kata's fourth: "API responde: Inmediato (202 Accepted)".
API_NAME = "API responds (202)"


class _Judged:
    """A table row's verdict as the tables show it: its words and its one style."""

    verdict: Verdict | None

    @property
    def verdict_text(self) -> str:
        return "" if self.verdict is None else str(self.verdict)

    @property
    def style(self) -> str:
        return "" if self.verdict is None else self.verdict.style


@dataclass(frozen=True)
class TableRow(_Judged):
    """The cells of one row, as text; empty until there is something to show."""

    name: str
    expected: str
    ideal: str
    measured: str = ""  # a row's median makespan; the API's slowest answer (what is judged)
    spread: str = ""  # min - max of a row's runs; the API's answers by status
    overhead: str = ""  # a row's median minus its ideal; the API's median answer
    share: str = ""  # the overhead as a share of the ideal
    verdict: Verdict | None = None
    reason: str = ""


def seconds(value: float | None) -> str:
    """A measured time: 2.013 s (millisecond resolution, as the tolerances are)."""
    return "-" if value is None or math.isnan(value) else f"{value:.3f} s"


def nominal(value: float | None) -> str:
    """A time from the suite (expected, ideal): 2 s, 0.3 s."""
    return "-" if value is None else f"{value:g} s"


def ms(value: float | None) -> str:
    """A latency with three significant digits at most: 2.4 ms, 75 ms, 123 ms."""
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.1f} ms" if abs(value) < 10 else f"{value:.0f} ms"


def planned(row: Row) -> TableRow:
    """A suite row before it has run: what it expects."""
    return TableRow(row.name, nominal(row.expected_seconds), nominal(row.ideal_seconds))


def api_planned(suite: Suite) -> TableRow:
    """The API's row before a run: its bar for the slowest answer."""
    return TableRow(API_NAME, f"< {suite.api_bar_ms():g} ms", "-")


def row_cells(result: RowResult) -> TableRow:
    """A suite row with its median makespan, spread, overhead (none for a faulty row) and
    verdict."""
    ideal = result.row.ideal_seconds
    overhead = result.overhead
    # A row of failures on purpose is slower than its ideal by design (retries, recoveries):
    # its ledger judges it, and an "overhead" would only mislead.
    known = not math.isnan(overhead) and not result.row.faulty
    low, high = min(result.makespans), max(result.makespans)
    return TableRow(
        name=result.row.name,
        expected=nominal(result.row.expected_seconds),
        ideal=nominal(ideal),
        measured=seconds(result.makespan),
        spread=f"{seconds(low)} - {seconds(high)}",
        overhead=f"{overhead * 1000:+.0f} ms" if known else "-",
        share=f"{100 * overhead / ideal:+.1f}%" if known and ideal else "",
        verdict=result.verdict,
        reason=result.reason,
    )


def api_cells(suite: Suite, api: ApiVerdict) -> TableRow:
    """The API's row: the slowest answer against the bar, its answers and their median."""
    total = sum(api.statuses.values())
    answers = ", ".join(f"{n} x {code}" for code, n in sorted(api.statuses.items()))
    typical = label(HEADLINE)
    return TableRow(
        name=API_NAME,
        expected=api_planned(suite).expected,
        ideal="-",
        measured=f"max {ms(api.latency_ms.get('max'))}",
        spread=f"{answers} of {total}" if total else "no answer",
        overhead=f"{typical} {ms(api.latency_ms.get(typical))}",
        verdict=api.verdict,
        reason=api.reason,
    )


def table(result: SuiteResult) -> list[TableRow]:
    """Every row of a finished suite, then the API's (once its verdict is known)."""
    rows = [row_cells(r) for r in result.rows]
    if result.api is not None:
        rows.append(api_cells(result.suite, result.api))
    return rows


# -- Kata 4: the ledger of each row, as cells (terminal table, markdown, TUI) --------------


@dataclass(frozen=True)
class LedgerRow(_Judged):
    """A Kata 4 row's ledger as short cells: where every order went, and recovery."""

    name: str
    accepted: str
    refused: str
    completed: str
    dead: str
    lost: str
    twice: str  # work run twice / completed twice
    recovery: str  # p50 / max, or the one figure
    verdict: Verdict | None
    reason: str


def recovery_text(ledger: Ledger) -> str:
    if not ledger.recovery:
        return "-"
    if len(ledger.recovery) == 1:
        return f"{ledger.recovery[0]:.2f} s"
    # Compact, so that the ledger fits 80 columns: p50/max.
    return f"{ledger.recovery_p50:.2f}/{ledger.recovery_max:.2f} s"


def ledger_cells(result: RowResult) -> LedgerRow | None:
    """The ledger of a Kata 4 row's representative run (None for a row judged by its time)."""
    x = result.ledger
    if x is None:
        return None
    if x.skipped:
        return LedgerRow(result.row.name, *["-"] * 7, result.verdict, result.reason)
    other = sum(x.other.values())
    return LedgerRow(
        name=result.row.name,
        accepted=str(x.accepted),
        refused=f"{x.refused}" + (f" +{other} other" if other else ""),
        completed=str(x.completed),
        dead=str(x.dead),
        lost=str(x.lost),
        twice=f"{x.work_twice}/{x.completed_twice}",
        recovery=recovery_text(x),
        verdict=result.verdict,
        reason=result.reason,
    )


def ledger_table(result: SuiteResult) -> list[LedgerRow]:
    """The ledger of every Kata 4 row of a suite (empty for kata3 and scaling)."""
    return [c for r in result.rows if (c := ledger_cells(r)) is not None]
