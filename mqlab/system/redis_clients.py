"""The one place that makes Redis clients from a URL (REDIS_URL, --redis-url).

`redis://`, `rediss://` and `unix://` URLs go to redis-py's `from_url`. A Sentinel URL names
the Sentinels that watch a primary and the primary's service name; the client asks them
where the primary is and asks again after a failover:

    redis+sentinel://[user[:password]@]host[:port][,host[:port]...]/SERVICE[/DB]
        [?db=N&sentinel_username=..&sentinel_password=..]

- The userinfo's credentials are the primary's (and its replicas'). The Sentinels' default to
  the same; `sentinel_username` / `sentinel_password` (also spelled `sentinel_user`) give
  others. A port left out is Sentinel's own, 26379. IPv6 addresses go in brackets.
- Why this form: it is the one others converged on (redis-sentinel-url, LangChain, RedisVL,
  Prefect, docket: `redis+sentinel://` with a comma-separated host list and the service as
  the path), so a URL copied from one of them works here. Celery/kombu's
  `sentinel://h1;sentinel://h2` with `master_name` in transport options needs a second
  setting beside the URL, which an environment variable cannot carry; redis-py itself has no
  Sentinel URL (redis/redis-py#537, #3084 closed unmerged).

A client made here from a Sentinel URL follows a failover: redis-py's SentinelConnectionPool
asks the Sentinels for the primary whenever it opens a connection, and drops connections to
a node that is no longer the primary. Its close() also closes its connections to the
Sentinels (redis-py's `Sentinel` has no close of its own).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis
import redis.asyncio as aioredis
import redis.asyncio.sentinel as async_sentinel
import redis.connection
import redis.sentinel as sync_sentinel

#: The scheme of a Sentinel URL.
SENTINEL_SCHEME = "redis+sentinel"
#: The port a Sentinel listens on when the URL names none.
SENTINEL_PORT = 26379
_QUERY = {"db", "sentinel_username", "sentinel_user", "sentinel_password"}
_SERVICE = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: A host name or an IP address (an IPv6 one without its brackets, maybe with a %zone).
_HOST = re.compile(r"[A-Za-z0-9._%:-]{1,253}")
_FORM = f"{SENTINEL_SCHEME}://[user[:password]@]host:port[,host:port...]/SERVICE[?db=N]"


@dataclass(frozen=True)
class SentinelTarget:
    """What a Sentinel URL says: where the Sentinels are, which primary, and how to log in."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def __repr__(self) -> str:  # never the passwords (a repr lands in logs and tracebacks)
        return f"SentinelTarget(sentinels={self.sentinels!r}, service={self.service!r})"


def is_sentinel_url(url: str) -> bool:
    """True for a `redis+sentinel://` URL."""
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """The parts of a Sentinel URL; ValueError saying what is wrong (without the password)."""
    if not is_sentinel_url(url):
        raise ValueError(f"not a Sentinel URL: it must start with {SENTINEL_SCHEME}://")
    rest = url[len(SENTINEL_SCHEME) + 3 :]
    rest, _, query = rest.partition("?")
    if "#" in query or "#" in rest:
        raise ValueError("a Sentinel URL has no #fragment")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(part) for part in hosts.split(","))
    parts = path.split("/") if slash else []
    if not parts or not parts[0]:
        raise ValueError(f"the Sentinel URL names no service (the primary's name): {_FORM}")
    if len(parts) > 2 or not _SERVICE.fullmatch(unquote(parts[0])):
        raise ValueError(
            f"the Sentinel URL's path must be /SERVICE or /SERVICE/DB, SERVICE being 1-64 "
            f"letters, digits, '.', '_' or '-': {_FORM}"
        )
    options = _options(query)
    db = _db(parts[1], "path") if len(parts) == 2 else None
    if "db" in options:
        if db is not None and db != _db(options["db"], "db="):
            raise ValueError("the Sentinel URL gives two different databases (path and db=)")
        db = _db(options["db"], "db=")
    return SentinelTarget(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=db or 0,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username", username),
        sentinel_password=options.get("sentinel_password", password),
    )


def _address(part: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` of one Sentinel."""
    host, port = part, ""
    if part.startswith("["):
        host, bracket, tail = part[1:].partition("]")
        if not bracket or (tail and not tail.startswith(":")):
            raise ValueError(f"a Sentinel address {part!r} is not [IPv6]:port")
        port = tail[1:]
    elif ":" in part:
        host, _, port = part.rpartition(":")
    if not _HOST.fullmatch(host):
        raise ValueError(f"a Sentinel address is empty or malformed: {_FORM}")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"the Sentinel port {port!r} of {host} is not a number 1-65535")
    return host, int(port) if port else SENTINEL_PORT


def _options(query: str) -> dict[str, str]:
    """The query's options; ValueError naming an unknown or repeated one (not its value)."""
    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:  # its message quotes the field, which may be a password
        raise ValueError("a Sentinel URL option is not name=value") from None
    for name, value in pairs:
        if name not in _QUERY:
            known = ", ".join(sorted(_QUERY))
            raise ValueError(f"unknown Sentinel URL option {name!r} (known: {known})")
        name = "sentinel_username" if name == "sentinel_user" else name
        if name in options:
            raise ValueError(f"the Sentinel URL gives {name} twice")
        options[name] = value
    return options


def _db(text: str, where: str) -> int:
    if not text.isdigit():
        raise ValueError(f"the Sentinel URL's database ({where}) must be a number >= 0")
    return int(text)


def _sentinel_kwargs(target: SentinelTarget, kwargs: dict[str, Any]) -> dict[str, Any]:
    """How to talk to the Sentinels: their credentials, and the caller's socket timeouts (a
    Sentinel that does not answer must not hold a client longer than the primary would)."""
    found = {k: v for k, v in kwargs.items() if k.startswith("socket_")}
    found.update(username=target.sentinel_username, password=target.sentinel_password)
    return found


def _primary_kwargs(target: SentinelTarget, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The caller's kwargs, with what the URL says winning (as in redis-py's from_url)."""
    found = {**kwargs, "db": target.db}
    if target.username is not None:
        found["username"] = target.username
    if target.password is not None:
        found["password"] = target.password
    return found


class SentinelRedis(redis.Redis):
    """A client of the primary a Sentinel names; close() also closes its Sentinel clients."""

    def close(self) -> None:
        pool = self.connection_pool
        super().close()
        if isinstance(pool, sync_sentinel.SentinelConnectionPool):
            for client in pool.sentinel_manager.sentinels:
                client.close()


class AsyncSentinelRedis(aioredis.Redis):
    """The asyncio SentinelRedis: aclose() also closes its Sentinel clients (left open they
    would warn, unclosed, when collected)."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        await super().aclose(close_connection_pool)
        if isinstance(pool, async_sentinel.SentinelConnectionPool):
            for client in pool.sentinel_manager.sentinels:
                await client.aclose()


def sync_client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client for `url` (kwargs as for Redis.from_url); ValueError for a bad URL."""
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    manager = sync_sentinel.Sentinel(
        target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, kwargs)
    )
    return manager.master_for(
        target.service, redis_class=SentinelRedis, **_primary_kwargs(target, kwargs)
    )


def async_client(url: str, **kwargs: Any) -> aioredis.Redis:
    """An asyncio redis-py client for `url` (kwargs as for from_url); ValueError for a bad URL."""
    if not is_sentinel_url(url):
        return aioredis.Redis.from_url(url, **kwargs)
    target = parse_sentinel_url(url)
    manager = async_sentinel.Sentinel(
        target.sentinels, sentinel_kwargs=_sentinel_kwargs(target, kwargs)
    )
    return manager.master_for(
        target.service, redis_class=AsyncSentinelRedis, **_primary_kwargs(target, kwargs)
    )


def check_url(url: str) -> None:
    """ValueError, saying what is wrong, when `url` is no Redis URL a client can be made from
    (without connecting): for a command to refuse a bad REDIS_URL before it starts anything."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return
    try:
        redis.connection.parse_url(url)
    except ValueError as exc:
        also = f"{SENTINEL_SCHEME}:// for a primary found through Sentinel"
        raise ValueError(f"{exc}, or {also}") from None


_USERINFO = re.compile(r"(://[^:/@]*:)[^@]*@")
_SECRET_OPTION = re.compile(r"([?&][a-z_]*password=)[^&#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with its passwords hidden (the userinfo's, and `...password=` options such as
    a Sentinel URL's): for tables, screens and logs read over shoulders or pasted in issues."""
    return _SECRET_OPTION.sub(r"\1***", _USERINFO.sub(r"\1***@", url))
