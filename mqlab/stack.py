"""The stack a lab command runs on: the servers (mqlab.environment's, embedded ones started
if need be) and a supervisor with the API. Leaving it stops everything it started, and only
that."""

from __future__ import annotations

from mqlab.environment import Opened, Servers
from mqlab.services import postgres_server, valkey_server
from mqlab.settings import Settings
from mqlab.supervisor import LineHandler, Supervisor


class Stack(Opened["Stack"]):
    """`with Stack() as stack:` gives stack.settings and stack.sup (API already up)."""

    def __init__(
        self,
        redis_url: str | None = None,
        database_url: str | None = None,
        api_port: int | None = None,
        on_line: LineHandler | None = None,
    ) -> None:
        self.servers = Servers(redis_url, database_url)
        self._api_port = api_port
        self._on_line = on_line
        self.settings: Settings | None = None
        self.sup: Supervisor | None = None

    @property
    def started_services(self) -> list[str]:
        """The embedded servers this stack started (and will stop)."""
        return self.servers.started

    def open(self) -> Stack:
        self.settings = self.servers.open()
        self.sup = Supervisor(self.settings, on_line=self._on_line)
        self.sup.start_api(self._api_port)
        return self

    def close(self) -> None:
        if self.sup is not None:
            self.sup.close()
        self.servers.close()

    def versions(self) -> dict[str, str]:
        """Server versions, for the report."""
        assert self.settings is not None
        out = {
            "redis": valkey_server.probe({"url": self.settings.redis_url})[1] or "?",
            "postgres": postgres_server.probe({"url": self.settings.database_url})[1] or "?",
        }
        out["servers"] = "embedded, started by this run" if self.started_services else "existing"
        return out
