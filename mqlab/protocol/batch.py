"""Taking several messages at once: the batch a worker takes when the queue is deep.

One Lua script moves up to K messages from the queue into the worker's processing list, each
with LMOVE (the same move as BLMOVE, without the wait), so that every message taken is in the
processing list the moment it leaves the queue: a worker killed with a batch in hand loses
none of it (the reaper hands its list back). BLMPOP/LMPOP would take K in one command but keep
no copy. K is the caller's most, cut to a fair share of the depth among the live workers, so
that one worker does not take what others could start sooner; a queue of one gives one.
"""

from __future__ import annotations

from typing import Any

from mqlab.protocol.keys import QUEUE

#: KEYS: the queue, the processing list. ARGV: the most to take, the live workers (at least
#: 1). Takes ceil(depth / workers), at most the most, oldest first (the queue's right end, as
#: BLMOVE); returns them in the order taken.
TAKE = """
local depth = redis.call('LLEN', KEYS[1])
local k = math.min(tonumber(ARGV[1]), math.ceil(depth / tonumber(ARGV[2])))
local taken = {}
for i = 1, k do
    local m = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
    if not m then break end
    taken[i] = m
end
return taken
"""


def take(pipe: Any, processing: str | bytes, most: int, workers: int) -> Any:
    """Queue (on a pipeline) or run (on a client) the take of a batch: its reply is the list of
    messages moved, empty when the queue is."""
    return pipe.eval(TAKE, 2, QUEUE, processing, most, max(1, workers))


#: KEYS: the processing list, the queue. ARGV: messages. Each one still in the processing list
#: leaves it for the queue's head (RPUSH: the end workers take first); one no longer there (a
#: reaper moved it) is left alone. Returns how many moved.
GIVE_BACK = """
local moved = 0
for _, m in ipairs(ARGV) do
    if redis.call('LREM', KEYS[1], 1, m) == 1 then
        redis.call('RPUSH', KEYS[2], m)
        moved = moved + 1
    end
end
return moved
"""


async def give_back(client: Any, processing: str | bytes, messages: list[bytes]) -> int:
    """Move `messages` of a batch from `processing` back to the queue's head, atomically."""
    return int(await client.eval(GIVE_BACK, 2, processing, QUEUE, *messages))
