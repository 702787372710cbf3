"""How `mqlab services ...` shows the servers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.table import Table
from rich.text import Text

from mqlab.lab.services.manager import ServiceInfo
from mqlab.system.redis_clients import redact

#: Each server's one name, whatever its state (its role's key is "redis" / "postgres"; the
#: version column says which build runs, an older mqlab's Redis 6.2 included).
SERVER_NAMES = {"redis": "valkey", "postgres": "postgresql"}
_STATE_STYLE = {"running": "green", "started": "green", "stopped": "dim", "stale": "yellow"}
#: URLs start in this column, beside their server's name, where the line is wide enough.
_LABEL = 11


@dataclass
class UrlLines:
    """Each server's URLs, one per line and never broken: a URL cut in two at the edge of
    the terminal (as Rich wraps text) pastes as two broken halves.

    Beside the server's name where it fits, else on lines of their own under it; a URL
    longer than the terminal is written whole and the terminal wraps it (softly: copied,
    it is one line again)."""

    urls: list[tuple[str, list[str]]] = field(default_factory=list)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from self._lines(options.max_width)

    def _lines(self, width: int) -> Iterator[Text]:
        for server, urls in self.urls:
            beside = all(_LABEL + len(url) <= width for url in urls)
            if not beside:
                yield Text(server, style="bold")
            for i, url in enumerate(urls):
                line = Text(no_wrap=True, overflow="ignore", end="\n")
                if beside:
                    line.append(
                        f"{server if i == 0 else '':<{_LABEL}}", style="bold" if i == 0 else ""
                    )
                line.append(url)
                yield line


def services_table(infos: list[ServiceInfo]) -> Group:
    """A row per server, then its URLs on lines of their own (they are long; keep them whole)."""
    table = Table(title="mqlab embedded services", title_justify="left")
    for column in ("server", "state", "health", "pid", "version"):
        table.add_column(column)
    urls = UrlLines()
    for info in infos:
        health = "" if info.state in ("stopped", "stale") else ("ok" if info.healthy else "DOWN")
        style = _STATE_STYLE.get(info.state, "")
        server = SERVER_NAMES.get(info.name, info.name)
        table.add_row(
            server, Text(info.state, style=style), health, str(info.pid or ""), info.version
        )
        if info.url and info.state in ("running", "started"):
            shown = [redact(info.url)]
            if info.tcp_url and info.tcp_url != info.url:
                shown.append(redact(info.tcp_url))
            if info.remote_url:
                shown.append(redact(info.remote_url))
            urls.urls.append((server, shown))
    return Group(table, urls)
