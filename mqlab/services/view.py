"""How `mqlab services ...` shows the servers."""

from __future__ import annotations

import re

from rich.console import Group
from rich.table import Table
from rich.text import Text

from mqlab.services.manager import ServiceInfo

_STATE_STYLE = {"running": "green", "started": "green", "stopped": "dim", "stale": "yellow"}


def masked(url: str) -> str:
    """The URL with its password hidden: a table is read over shoulders and pasted in
    issues. `mqlab services env` prints the real ones."""
    return re.sub(r"(//[^:/@]*:)[^@/]+@", r"\1***@", url)


def services_table(infos: list[ServiceInfo]) -> Group:
    """A row per server, then its URLs on lines of their own (they are long; keep them whole)."""
    table = Table(title="mqlab embedded services", title_justify="left")
    for column in ("server", "state", "health", "pid", "version"):
        table.add_column(column)
    lines: list[Text] = []
    for info in infos:
        health = "" if info.state in ("stopped", "stale") else ("ok" if info.healthy else "DOWN")
        style = _STATE_STYLE.get(info.state, "")
        # What the server is ("valkey", or "redis" for an older mqlab's Redis 6.2 still
        # running), not only its role.
        server = info.version.split()[0].lower() if info.version else info.name
        table.add_row(
            server, Text(info.state, style=style), health, str(info.pid or ""), info.version
        )
        if info.url and info.state in ("running", "started"):
            lines.append(Text.assemble((f"{server:<11}", "bold"), masked(info.url)))
            if info.tcp_url and info.tcp_url != info.url:
                lines.append(Text.assemble(" " * 11, masked(info.tcp_url)))
    return Group(table, *lines)
