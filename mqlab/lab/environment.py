"""The servers a command runs on, found one way for every command and the tests:
a flag, else REDIS_URL / DATABASE_URL, else the embedded servers that run, else (for the
commands that may) embedded servers started for this run and stopped when it ends."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Generic, TypeVar

from mqlab.lab import services
from mqlab.lab.services import postgres_server, valkey_server
from mqlab.lab.services.manager import ServicesError, running_urls
from mqlab.settings import Settings

#: The embedded servers' names, in the order running_urls() gives their URLs.
_NAMES = (valkey_server.NAME, postgres_server.NAME)


def given(redis_url: str | None = None, database_url: str | None = None) -> Settings:
    """What the person named: flags first, then REDIS_URL / DATABASE_URL (maybe incomplete)."""
    return Settings(redis_url or "", database_url or "").filled_from(Settings.from_env())


def find(
    redis_url: str | None = None, database_url: str | None = None, *, base: Path | None = None
) -> Settings:
    """Flags, then the environment, then the embedded servers running in `base` (default:
    MQLAB_HOME). ServicesError, saying how to get servers, when a backend is still missing."""
    settings = given(redis_url, database_url)
    if settings.missing:
        embedded = Settings(*(url or "" for url in running_urls(base)))
        settings = settings.filled_from(embedded)
    if settings.missing:
        raise ServicesError(
            f"no {' and no '.join(settings.missing)} to talk to: start the embedded servers "
            "with `mqlab services up`, or point mqlab at yours with REDIS_URL / DATABASE_URL "
            "(or --redis-url / --database-url)"
        )
    return settings


T = TypeVar("T")


class Opened(ABC, Generic[T]):
    """`with thing as opened:` opened = thing.open(), and thing.close() on the way out, also
    when open() fails half-way (whatever it started by then is stopped)."""

    @abstractmethod
    def open(self) -> T: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> T:
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


class Servers(Opened[Settings]):
    """`with Servers(...) as settings:` what find() finds, or else embedded servers started
    for this run in `base` (default: MQLAB_HOME); those, and only those, stop on the way out.

    Started servers are owned: they die with this process whatever happens to it. A `base`
    of the caller's own (the bench, the tests) keeps them apart from the person's servers.
    """

    def __init__(
        self,
        redis_url: str | None = None,
        database_url: str | None = None,
        *,
        base: Path | None = None,
        listen: str | None = None,
    ) -> None:
        self._urls = (redis_url, database_url)
        self.base = base
        #: An address to serve other hosts on too (services.up's listen), for servers started.
        self.listen = listen
        #: The embedded servers this run started ("redis", "postgres"); close() stops them.
        self.started: list[str] = []
        self.settings: Settings | None = None

    def open(self) -> Settings:
        try:
            self.settings = find(*self._urls, base=self.base)
        except ServicesError:
            before = dict(zip(_NAMES, running_urls(self.base), strict=True))
            try:
                infos = services.up(owned=True, base=self.base, listen=self.listen)
            except BaseException:
                # One started, then the other failed (or a Ctrl-C came): stop the one now,
                # not when this process dies, as the caller may remove `base` next.
                services.down(base=self.base, only=[n for n, url in before.items() if not url])
                raise
            self.started = [i.name for i in infos if i.state == "started"]
            self.settings = find(*self._urls, base=self.base)
        return self.settings

    def close(self) -> None:
        if self.started:
            services.down(base=self.base, only=self.started)
            self.started = []
