"""The two backends every part of mqlab talks to, as plain data.

Where they come from (flags, the environment, embedded servers) is decided in one place,
mqlab.lab.environment; this module only reads (and writes, for children) REDIS_URL and
DATABASE_URL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Redis's and PostgreSQL's URLs. An empty URL means "not known yet" while the
    environment is being resolved; the Settings handed to the rest of mqlab have both."""

    redis_url: str
    database_url: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """What REDIS_URL and DATABASE_URL say; "" for a variable that is not set."""
        env = os.environ if environ is None else environ
        return cls(env.get("REDIS_URL", ""), env.get("DATABASE_URL", ""))

    def to_env(self) -> dict[str, str]:
        """The variables from_env reads, for a child process that must find the same servers."""
        return {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url}

    def filled_from(self, other: Settings) -> Settings:
        """These URLs, with other's where one of these is empty (a flag wins over REDIS_URL)."""
        return Settings(self.redis_url or other.redis_url, self.database_url or other.database_url)

    @property
    def missing(self) -> list[str]:
        """The backends without a URL, by name ("Redis", "PostgreSQL")."""
        urls = (("Redis", self.redis_url), ("PostgreSQL", self.database_url))
        return [name for name, url in urls if not url]
