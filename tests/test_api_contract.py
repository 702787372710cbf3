"""The HTTP contract of DESIGN.md, as the kata's curl commands use it."""

from __future__ import annotations

import datetime as dt

import httpx
import orjson
import psycopg
import redis

from mqlab.protocol import keys
from tests.conftest import counts


def post(client: httpx.Client, product: str = "Laptop", quantity: int = 1, price: float = 1200):
    return client.post("/orders", json={"product": product, "quantity": quantity, "price": price})


def test_post_order_answers_202_with_the_katas_body(
    client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    res = post(client)
    assert res.status_code == 202
    body = res.json()
    assert body["message"] == "Orden recibida y en proceso"
    assert body["status"] == "pending"
    assert isinstance(body["orderId"], int)
    assert body["jobId"].startswith(f"job-{body['orderId']}-")
    assert res.headers["location"] == f"/orders/{body['orderId']}"
    # One row each, and one message on the queue that names them.
    assert counts(pg, rds) == {"orders": 1, "jobs": 1, "queue": 1}
    message = orjson.loads(rds.lindex(keys.QUEUE, 0))
    assert message["jobId"] == body["jobId"]
    assert message["orderId"] == body["orderId"]
    assert dt.datetime.fromisoformat(message["enqueuedAt"].replace("Z", "+00:00"))


def test_order_and_job_are_readable(client: httpx.Client) -> None:
    created = post(client, "Mouse", 3, 19.99).json()
    order = client.get(f"/orders/{created['orderId']}").json()
    assert order["product"] == "Mouse"
    assert order["quantity"] == 3
    assert order["price"] == 19.99
    assert order["status"] == "pending"
    assert order["jobId"] == created["jobId"]
    assert order["createdAt"].endswith("Z")
    job = client.get(f"/jobs/{created['jobId']}").json()
    assert job["orderId"] == created["orderId"]
    assert job["status"] == "pending"
    assert job["attempts"] == 0
    assert job["workerId"] is None
    assert job["enqueuedAt"].endswith("Z")


def test_lists_are_newest_first_with_limit_and_offset(client: httpx.Client) -> None:
    ids = [post(client, f"Item{i}").json()["orderId"] for i in range(5)]
    listed = [o["id"] for o in client.get("/orders").json()]
    assert listed == sorted(ids, reverse=True)
    page = [o["id"] for o in client.get("/orders", params={"limit": 2, "offset": 1}).json()]
    assert page == sorted(ids, reverse=True)[1:3]
    jobs = client.get("/jobs", params={"limit": 3}).json()
    assert [j["orderId"] for j in jobs] == sorted(ids, reverse=True)[:3]


def test_bad_paging_and_unknown_ids(client: httpx.Client) -> None:
    for params in ({"limit": 0}, {"limit": 5000}, {"offset": -1}, {"limit": "x"}):
        res = client.get("/orders", params=params)
        assert res.status_code == 422, params
        assert res.json()["error"] == "invalid request"
    res = client.get("/orders/999999")
    assert res.status_code == 404
    assert res.json() == {"error": "not found", "details": [{"orderId": 999999}]}
    assert client.get("/jobs/job-nope").status_code == 404
    assert client.get("/orders/abc").status_code == 422


def test_an_integer_in_the_url_is_decimal_digits(client: httpx.Client) -> None:
    """pydantic's lax int reads "1.0", " 1", "+1" and "1_0": schemathesis found /orders/1.0
    answered with order 1."""
    order_id = client.post("/orders", json={"product": "P", "quantity": 1, "price": 1}).json()[
        "orderId"
    ]
    assert client.get(f"/orders/{order_id}").status_code == 200
    for text in (f"{order_id}.0", f"+{order_id}", f"%20{order_id}", f"{order_id}%20", "1_0"):
        res = client.get(f"/orders/{text}")
        assert res.status_code == 422, text
        assert res.json()["error"] == "invalid request"
    for value in ("1.0", "+1", " 1", "1_0"):
        assert client.get("/orders", params={"limit": value}).status_code == 422, value
        assert client.get("/jobs", params={"offset": value}).status_code == 422, value


def test_paging_and_ids_beyond_the_database_range(client: httpx.Client) -> None:
    bigint_max = 2**63 - 1
    for path in ("/orders", "/jobs"):
        res = client.get(path, params={"offset": bigint_max + 1})
        assert res.status_code == 422, res.text
        assert res.json()["details"][0]["field"] == "query.offset"
        assert client.get(path, params={"offset": 10**30}).status_code == 422
        assert client.get(path, params={"offset": bigint_max}).json() == []
    # Ids that no row can have are not found, whatever their size.
    for order_id in ("99999999999999999999", str(bigint_max + 1), "0", "-5"):
        res = client.get(f"/orders/{order_id}")
        assert res.status_code == 404, order_id
        assert res.json() == {"error": "not found", "details": [{"orderId": int(order_id)}]}
    assert client.get("/jobs/a%00b").status_code == 404


def test_unknown_path_and_method_are_json(client: httpx.Client) -> None:
    res = client.get("/nowhere")
    assert res.status_code == 404
    assert res.json()["error"] == "not found"
    res = client.delete("/orders")
    assert res.status_code == 405
    assert res.json()["error"] == "method not allowed"
    # Every method of the path, not only those of its first route (POST).
    assert res.headers["allow"] == "GET, HEAD, POST"


def test_head_answers_like_get_without_a_body(client: httpx.Client) -> None:
    order_id = post(client).json()["orderId"]
    for path in ("/orders", f"/orders/{order_id}", "/jobs", "/health", "/stats", "/orders/0"):
        get, head = client.get(path), client.head(path)
        assert head.status_code == get.status_code, path
        assert head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]
        if path != "/stats":  # its takenAt changes between the two requests
            assert head.headers["content-length"] == str(len(get.content))
    assert client.head("/nowhere").status_code == 404
    res = client.head("/jobs/x/retry")
    assert (res.status_code, res.headers["allow"]) == (405, "POST")


def test_a_404_quotes_at_most_64_characters_of_the_id(client: httpx.Client) -> None:
    for path, key, long_id in (
        ("/jobs/", "jobId", "j" * 9000),
        ("/orders/", "orderId", "9" * 4000),
        ("/jobs/{}/retry", "jobId", "r" * 9000),
    ):
        url = path.format(long_id) if "{}" in path else path + long_id
        res = client.post(url) if url.endswith("/retry") else client.get(url)
        assert res.status_code == 404, res.text[:200]
        assert res.json() == {"error": "not found", "details": [{key: long_id[:64] + "…"}]}


def test_health_and_stats(client: httpx.Client) -> None:
    health = client.get("/health").json()
    # The reconciler's last run, whichever test's it was (test_reconciler checks its fields).
    assert "reconciler" in health
    del health["reconciler"]
    assert health == {"status": "ok", "redis": "up", "postgres": "up"}
    post(client)
    stats = client.get("/stats").json()
    assert stats["queueDepth"] == 1
    assert stats["orders"]["pending"] == 1
    assert stats["jobs"]["pending"] == 1
    assert stats["dead"] == 0
    assert stats["workers"] == []


def test_openapi_and_docs(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    assert "/orders" in spec["paths"]
    body = spec["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]
    assert set(body["schema"]["required"]) == {"product", "quantity", "price"}
    assert client.get("/docs").status_code == 200
