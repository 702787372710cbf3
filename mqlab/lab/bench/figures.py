"""The bench's figures, their targets, and how they are shown (a rich table, JSON)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.table import Table


@dataclass(frozen=True)
class Target:
    """A figure's goal: at least (higher is better) or at most `value`."""

    value: float
    higher_is_better: bool
    strict: bool = False  # < or >, not <= or >=

    def met(self, figure: float | None) -> bool | None:
        if figure is None:
            return None
        if self.higher_is_better:
            return figure > self.value if self.strict else figure >= self.value
        return figure < self.value if self.strict else figure <= self.value

    def __str__(self) -> str:
        sign = ">" if self.higher_is_better else "<"
        return f"{sign}{'' if self.strict else '='} {self.value:g}"


TARGETS: dict[str, Target] = {
    "api_c1_rate": Target(728, True),
    "api_c1_p50_ms": Target(1.2, False),
    "api_c10_rate": Target(2108, True),
    "api_c10_p50_ms": Target(4.5, False),
    # Issue 20's: ahead of the best Python peer measured here (Dramatiq, 8 threads a process:
    # 1,832 and 4,564 jobs/s); one at a time, the targets from before batches.
    "drain_w1_rate": Target(1850, True),
    "drain_w4_rate": Target(4600, True),
    "drain_w1_single_rate": Target(376, True),
    "drain_w4_single_rate": Target(810, True),
    # Issue 20: one process with 10 slots runs the kata's 10 orders of 2 s in about 2 s (the
    # kata table's bar for its 10 orders on 4 workers: 60 ms over).
    "slots_seconds": Target(2.06, False),
    "dispatch_w1_p50_ms": Target(1.0, False, strict=True),
    "dispatch_w4_p50_ms": Target(1.0, False, strict=True),
    # The kata suite's verdict judges the slowest answer (< 50 ms); the burst's median is
    # this speed target (it was a verdict there until issue 8).
    "burst_p50_ms": Target(5.0, False, strict=True),
}


@dataclass
class Figure:
    """One line of the table."""

    key: str
    label: str
    value: float | None
    unit: str
    note: str = ""

    @property
    def target(self) -> Target | None:
        return TARGETS.get(self.key)


@dataclass
class Results:
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, label: str, value: float | None, unit: str, note: str = "") -> None:
        self.figures.append(Figure(key, label, value, unit, note))


def table(results: Results) -> Table:
    out = Table(
        title="mqlab bench: POST /orders, drain, dispatch and the kata's burst",
        title_justify="left",
    )
    out.add_column("Measure")
    out.add_column("Measured", justify="right")
    out.add_column("Target", justify="right")
    out.add_column("", justify="center")
    out.add_column("Notes", style="dim")
    for fig in results.figures:
        value = "" if fig.value is None else f"{fig.value:,.{0 if fig.value >= 100 else 2}f}"
        if fig.unit == "µs" and fig.value is not None:
            value = f"{fig.value:,.0f}"
        target = fig.target
        met = target.met(fig.value) if target else None
        verdict = {True: "[green]✓[/]", False: "[red]✗[/]", None: ""}[met]
        out.add_row(
            fig.label,
            f"{value} {fig.unit}".strip(),
            f"{target} {fig.unit}" if target else "",
            verdict,
            fig.note,
        )
    return out


def as_json(results: Results, seconds: float, jobs: int) -> dict[str, Any]:
    figures = {
        f.key: {
            "value": f.value,
            "unit": f.unit,
            "target": asdict(f.target) if f.target else None,
            "met": f.target.met(f.value) if f.target else None,
        }
        for f in results.figures
        if f.value is not None
    }
    return {
        "at": time.time(),
        "seconds": seconds,
        "jobs": jobs,
        "cpus": os.cpu_count(),
        "figures": figures,
        "details": results.details,
    }
