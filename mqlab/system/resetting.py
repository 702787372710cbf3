"""A clean slate: no orders, no jobs, nothing queued, delayed, in flight, dead or in the event
stream, and no record of the reconciler's last run."""

from __future__ import annotations

import psycopg

from mqlab import db
from mqlab.protocol import keys
from mqlab.protocol.scans import processing_lists_sync
from mqlab.settings import Settings
from mqlab.system.redis_clients import sync_client


def reset_all(settings: Settings, restart_ids: bool = True) -> None:
    """Empty PostgreSQL's tables and mqlab's Redis keys (worker heartbeats are left alone);
    the order ids start at 1 again unless restart_ids is False."""
    client = sync_client(settings.redis_url)
    try:
        client.delete(
            keys.QUEUE,
            keys.DELAYED,
            keys.DEAD,
            keys.EVENTS,
            keys.RECONCILER,
            *processing_lists_sync(client),
        )
    finally:
        client.close()
    with psycopg.connect(settings.database_url, autocommit=True, **db.connect_options()) as conn:
        db.reset_data(conn, restart_ids)
