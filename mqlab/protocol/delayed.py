"""The delayed set: jobs waiting out their backoff, and their way back to the queue.

A failed attempt that will be retried leaves the worker's processing list for `orders:delayed`
(a sorted set scored by the epoch second it is due) in one Lua script, so that it is in one
place or the other, never in both or neither. Due jobs move to the queue in another script,
run by every live worker every PROMOTE_INTERVAL: a script runs alone on the server, so two
workers promoting at once cannot move one job twice, and with no worker alive the jobs simply
wait in the set (PostgreSQL has them as `retrying`, with their due time).

Both scripts read Redis's own clock (TIME), not the caller's: workers on other machines agree
on when a job is due as long as they share the Redis.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from mqlab.protocol.keys import DELAYED, QUEUE

#: A live worker promotes due jobs at least this often (seconds): the lag a retry may add to
#: its backoff, at worst.
PROMOTE_INTERVAL = 0.25
#: At most this many jobs move per script call, so one call never holds the server long.
PROMOTE_BATCH = 500

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

#: KEYS: the processing list, the delayed set. ARGV: the message, the delay in seconds.
#: Returns the due time (epoch seconds, as text: Lua numbers become integers on the way out).
DEFER = (
    _NOW
    + """
local due = now + tonumber(ARGV[2])
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('ZADD', KEYS[2], due, ARGV[1])
return tostring(due)
"""
)

#: KEYS: the delayed set, the queue. ARGV: the batch size. Due jobs join the queue's tail
#: (LPUSH: the end workers take last), oldest due first, as new orders do. Returns how many
#: moved and the seconds until the next one is due ("-1" when none waits), as text.
PROMOTE = (
    _NOW
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due > 0 then
    redis.call('ZREM', KEYS[1], unpack(due))
    redis.call('LPUSH', KEYS[2], unpack(due))
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local wait = -1
if nxt[2] then wait = math.max(0, tonumber(nxt[2]) - now) end
return {#due, tostring(wait)}
"""
)


def defer(pipe: Any, processing: str, raw: bytes, delay: float) -> None:
    """Queue, on a pipeline, the move of `raw` from `processing` to the delayed set, due in
    `delay` seconds."""
    pipe.eval(DEFER, 2, processing, DELAYED, raw, repr(float(delay)))


async def promote(client: aioredis.Redis, batch: int = PROMOTE_BATCH) -> tuple[int, float | None]:
    """Move due jobs to the queue: (how many moved, seconds until the next is due or None)."""
    moved, wait = await client.eval(PROMOTE, 2, DELAYED, QUEUE, batch)  # type: ignore[misc]
    seconds = float(wait)
    return int(moved), None if seconds < 0 else seconds


async def next_due(client: aioredis.Redis) -> float | None:
    """The epoch second (Redis's clock) the next delayed job is due, or None."""
    first = await client.zrange(DELAYED, 0, 0, withscores=True)
    return float(first[0][1]) if first else None
