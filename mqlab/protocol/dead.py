"""A message's way to the dead letters: out of a worker's processing list onto `orders:dead`.

One script, so that the message is in one place or the other: and only when it was still in
the processing list, so that a call sent again after a lost reply (the worker retries it)
adds no second dead letter.
"""

from __future__ import annotations

from typing import Any

from mqlab.protocol.keys import DEAD

#: KEYS: the processing list, the dead letters. ARGV: the message, its dead-letter entry.
#: Returns 1 when it moved the message, 0 when the message was no longer there.
BURY = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
    redis.call('LPUSH', KEYS[2], ARGV[2])
    return 1
end
return 0
"""


def bury(pipe: Any, processing: str, raw: bytes, entry: bytes) -> Any:
    """The move of `raw` to the dead letters: queued on a pipeline, or on a client the
    awaitable that makes it."""
    return pipe.eval(BURY, 2, processing, DEAD, raw, entry)
