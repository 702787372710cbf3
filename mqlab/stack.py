"""The stack a lab command runs on: the servers (embedded ones started if need be) and a
supervisor with the API. Leaving it stops everything it started, and only that."""

from __future__ import annotations

from types import TracebackType

from mqlab import services
from mqlab.services import postgres_server, valkey_server
from mqlab.services.manager import ServicesError
from mqlab.settings import Settings
from mqlab.supervisor import LineHandler, Supervisor


class Stack:
    """`with Stack() as stack:` gives stack.settings and stack.sup (API already up)."""

    def __init__(
        self,
        redis_url: str | None = None,
        database_url: str | None = None,
        api_port: int | None = None,
        on_line: LineHandler | None = None,
    ) -> None:
        self._urls = (redis_url, database_url)
        self._api_port = api_port
        self._on_line = on_line
        self.started_services: list[str] = []
        self.settings: Settings | None = None
        self.sup: Supervisor | None = None

    def open(self) -> Stack:
        try:
            self.settings = Settings.resolve(*self._urls)
        except ServicesError:
            # Nothing configured and nothing running: embedded servers of our own, which
            # die with this process whatever happens to it.
            infos = services.up(owned=True)
            self.started_services = [i.name for i in infos if i.state == "started"]
            self.settings = Settings.resolve(*self._urls)
        self.sup = Supervisor(self.settings, on_line=self._on_line)
        self.sup.start_api(self._api_port)
        return self

    def close(self) -> None:
        if self.sup is not None:
            self.sup.close()
        if self.started_services:
            services.down(only=self.started_services)
            self.started_services = []

    def versions(self) -> dict[str, str]:
        """Server versions, for the report."""
        assert self.settings is not None
        out = {
            "redis": valkey_server.probe({"url": self.settings.redis_url})[1] or "?",
            "postgres": postgres_server.probe({"url": self.settings.database_url})[1] or "?",
        }
        out["servers"] = "embedded, started by this run" if self.started_services else "existing"
        return out

    def __enter__(self) -> Stack:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
