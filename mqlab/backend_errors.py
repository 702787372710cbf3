"""What "a backend is down" looks like, for every part of mqlab that waits out an outage,
answers 503 or shows a server as down.

Down means the server cannot be reached or did not answer in time; a server that answers
with a refusal (a SQL error, a Redis error reply) is not down, and the callers that treat
it alike (see REDIS_FAILURE) say why they do.
"""

from __future__ import annotations

import psycopg
import redis.exceptions

#: Redis cannot be reached, or did not answer within the client's socket timeout. OSError:
#: a unix socket that is gone (or a DNS failure) surfaces from redis-py as itself.
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OSError,
)
#: PostgreSQL cannot be reached, dropped the connection, or the API's pool had no connection
#: to give within its timeout (psycopg_pool.PoolTimeout is an OperationalError).
POSTGRES_DOWN: tuple[type[Exception], ...] = (psycopg.OperationalError, psycopg.InterfaceError)
#: Either of them.
BACKEND_DOWN: tuple[type[Exception], ...] = (*REDIS_DOWN, *POSTGRES_DOWN)

#: Down, or answering with an error reply (NOAUTH after a password change, LOADING while it
#: reads its data, OOM, a key of the wrong type): for the callers that want the call's
#: outcome only, such as a health probe or an event that may be lost.
REDIS_FAILURE: tuple[type[Exception], ...] = (*REDIS_DOWN, redis.exceptions.RedisError)
