"""The stack a lab command runs on: the servers (mqlab.lab.environment's, embedded ones started
if need be) and a supervisor with the API. Leaving it stops everything it started, and only
that."""

from __future__ import annotations

import time
from collections.abc import Callable

from mqlab.lab.environment import Opened, Servers
from mqlab.lab.scenarios import owned_postgres
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.supervisor import LineHandler, Supervisor
from mqlab.settings import Settings


class NotOurServer(RuntimeError):
    """A drill asked to stop a server this stack did not start (a person's, or a URL's)."""


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

    # -- drills (Kata 4) ------------------------------------------------------------------------

    def postgres_stoppable(self) -> str | None:
        """None when stop_postgres can run; else why not, in words for the person."""
        if owned_postgres(self.servers) is not None:
            return None
        return (
            "PostgreSQL is not the embedded server this lab started (it was running already, "
            "or DATABASE_URL points at it): the lab stops only its own"
        )

    def stop_postgres(
        self, seconds: float, still_wanted: Callable[[], bool] = lambda: True
    ) -> None:
        """Stop the embedded PostgreSQL this stack started, wait `seconds`, start it again on
        the same port and password (clients reconnect to the same URL), as kata4's row does
        (mqlab.lab.scenarios.EmbeddedPostgres). `still_wanted()` is asked before the restart: a
        lab that closed meanwhile does not get a server back."""
        pg = owned_postgres(self.servers)
        if pg is None:
            raise NotOurServer(self.postgres_stoppable() or "")
        pg.stop()
        time.sleep(seconds)
        if still_wanted():
            pg.start()
