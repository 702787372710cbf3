"""Where the servers are: one resolution used by every command (flag > env > embedded)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mqlab.services.manager import ServicesError, running_urls


@dataclass(frozen=True)
class Settings:
    """The two backends every part of mqlab talks to."""

    redis_url: str
    database_url: str

    @classmethod
    def resolve(cls, redis_url: str | None = None, database_url: str | None = None) -> Settings:
        """Flags first, then REDIS_URL / DATABASE_URL, then the running embedded servers."""
        redis_url = redis_url or os.environ.get("REDIS_URL") or None
        database_url = database_url or os.environ.get("DATABASE_URL") or None
        if not (redis_url and database_url):
            embedded_redis, embedded_pg = running_urls()
            redis_url = redis_url or embedded_redis
            database_url = database_url or embedded_pg
        missing = [
            name for name, url in (("Redis", redis_url), ("PostgreSQL", database_url)) if not url
        ]
        if missing:
            raise ServicesError(
                f"no {' and no '.join(missing)} to talk to: start the embedded servers with "
                "`mqlab services up`, or point mqlab at yours with REDIS_URL / DATABASE_URL "
                "(or --redis-url / --database-url)"
            )
        assert redis_url and database_url
        return cls(redis_url=redis_url, database_url=database_url)
