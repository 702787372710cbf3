"""A suite on several hosts, run whole: its rows in order, each on a lab of the kind it
needs (mqlab.lab.hosts.lab.HostsLab): a failover row on a lab whose Valkey is replicated
behind Sentinels, every other row on one with a single Valkey behind the hosts' links. A run
of rows of one kind shares one lab; the parts' results make one suite's."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import replace

from mqlab.experiments import Suite
from mqlab.figures.progress import ProgressHandler
from mqlab.figures.results import SuiteResult
from mqlab.lab.hosts.lab import HostsLab
from mqlab.lab.runner import Runner


def run_on_hosts(
    suite: Suite, repeat: int = 1, on_progress: ProgressHandler | None = None
) -> tuple[SuiteResult, dict[str, str]]:
    """(the suite's result, the servers' versions for the report)."""
    assert suite.hosts is not None
    parts: list[SuiteResult] = []
    versions: dict[str, list[str]] = {}
    for replicated, rows in itertools.groupby(suite.rows, lambda r: r.failover_after is not None):
        part = replace(suite, rows=tuple(rows))
        with HostsLab(suite.hosts, replicated=replicated) as lab:
            assert lab.settings is not None and lab.sup is not None
            runner = Runner(lab.settings, lab.sup, on_progress=on_progress, hosts=lab)
            parts.append(asyncio.run(runner.run_suite(part, repeat=repeat, leave_clean=True)))
            for key, value in lab.versions().items():
                versions.setdefault(key, []).append(value)
    result = SuiteResult(
        suite=suite,
        repeat=repeat,
        started_at=parts[0].started_at,
        finished_at=parts[-1].finished_at,
        rows=[r for p in parts for r in p.rows],
    )
    result.compute()
    return result, {k: "; ".join(dict.fromkeys(v)) for k, v in versions.items()}
