"""The load generator against the session's API: one Shot per order, each a real order."""

from __future__ import annotations

import time

import psycopg

from mqlab.lab.loadgen import fire, pace


async def test_fire_sends_n_orders_over_c_connections(api_url: str, pg: psycopg.Connection) -> None:
    before = time.time()
    shots = await fire(api_url, 50, 5, product="Load", price=12.5)
    after = time.time()

    assert len(shots) == 50
    assert [s.index for s in shots] == list(range(50))
    assert {s.status for s in shots} == {202}, [s for s in shots if s.status != 202][:3]
    assert all(s.error is None for s in shots)
    # Generous bounds only: this is about sanity, not speed.
    assert all(0 < s.latency < 10 for s in shots)
    assert all(before - 1 <= s.sent_at <= after + 1 for s in shots)

    ids = [s.order_id for s in shots]
    assert len(set(ids)) == 50
    rows = pg.execute("SELECT o.id, o.product, o.price, j.id FROM orders o JOIN jobs j"
                      " ON j.order_id = o.id").fetchall()  # fmt: skip
    by_id = {oid: (product, float(price), job_id) for oid, product, price, job_id in rows}
    assert set(by_id) == set(ids)
    for shot in shots:
        product, price, job_id = by_id[shot.order_id]
        assert product == f"Load{shot.index}"
        assert price == 12.5
        assert shot.job_id == job_id


async def test_duration_caps_and_dead_servers_give_error_shots(api_url: str) -> None:
    shots = await fire(api_url, 20, 2, duration=30)
    assert len(shots) == 20  # n caps a timed run
    assert {s.status for s in shots} == {202}

    timed = await fire(api_url, 0, 2, duration=0.3)
    assert timed and {s.status for s in timed} == {202}

    paced = await pace(api_url, 3, 0.01)
    assert [s.status for s in paced] == [202, 202, 202]

    # Nothing listens on port 9 of loopback (discard): each request is an error Shot.
    dead = await fire("http://127.0.0.1:9", 3, 1)
    assert [s.status for s in dead] == [0, 0, 0]
    assert all(s.error and s.order_id is None for s in dead)
