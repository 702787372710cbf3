"""The queue protocol: what the API, the workers, the lab and `redis-cli` agree on.

keys.py      the Redis key names (the queue, processing lists, dead letters, heartbeats,
             events) and the heartbeat timings
scans.py     the scans for live workers and for processing lists (sync and async clients),
             and whether one run of a worker is alive (its heartbeat names it)
messages.py  the job message (encode, parse) and the dead letter made of an entry that is not one
ids.py       the job id's format (made in SQL and in Python, parsed) and the order of worker ids
events.py    worker states and event kinds, and the writer of the event stream

Nothing here imports the rest of mqlab (except backend_errors): every part may import it.
"""
