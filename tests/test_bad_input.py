"""Every malformed POST /orders: a 4xx with a JSON body naming the problem, and nothing written."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import redis

from tests.conftest import counts

OK = '{"product": "Laptop", "quantity": 1, "price": 1200}'
JSON = {"Content-Type": "application/json"}

# (name, raw body, headers, expected status, a word the error or its details must contain)
CASES: list[tuple[str, bytes | str, dict[str, str], int, str]] = [
    ("invalid json", '{"product": "x",', JSON, 400, "not valid JSON"),
    ("empty body", "", JSON, 400, "empty body"),
    ("json array", "[1, 2, 3]", JSON, 422, "JSON object"),
    ("json string", '"Laptop"', JSON, 422, "JSON object"),
    ("json null", "null", JSON, 422, "JSON object"),
    ("missing all", "{}", JSON, 422, "product"),
    ("missing price", '{"product": "a", "quantity": 1}', JSON, 422, "price"),
    ("quantity as string", '{"product": "a", "quantity": "1", "price": 1}', JSON, 422, "quantity"),
    ("price as string", '{"product": "a", "quantity": 1, "price": "10"}', JSON, 422, "price"),
    ("product as number", '{"product": 7, "quantity": 1, "price": 1}', JSON, 422, "product"),
    ("quantity bool", '{"product": "a", "quantity": true, "price": 1}', JSON, 422, "quantity"),
    ("quantity zero", '{"product": "a", "quantity": 0, "price": 1}', JSON, 422, "greater"),
    ("quantity negative", '{"product": "a", "quantity": -3, "price": 1}', JSON, 422, "greater"),
    ("quantity fraction", '{"product": "a", "quantity": 1.5, "price": 1}', JSON, 422, "integer"),
    ("quantity huge", '{"product": "a", "quantity": 10000000000, "price": 1}', JSON, 422, "less"),
    ("price negative", '{"product": "a", "quantity": 1, "price": -0.01}', JSON, 422, "greater"),
    ("price NaN", '{"product": "a", "quantity": 1, "price": NaN}', JSON, 422, "finite"),
    ("price Infinity", '{"product": "a", "quantity": 1, "price": Infinity}', JSON, 422, "finite"),
    ("price -Infinity", '{"product": "a", "quantity": 1, "price": -Infinity}', JSON, 422, "finite"),
    # Finite as written (infinity only as a float): too big.
    ("price overflow", '{"product": "a", "quantity": 1, "price": 1e400}', JSON, 422, "less"),
    ("price underflow", '{"product": "a", "quantity": 1, "price": 1e-400}', JSON, 422, "decimal"),
    (
        "quantity just under 1",
        '{"product": "a", "quantity": 0.99999999999999999999, "price": 1}',
        JSON,
        422,
        "integer",
    ),
    ("price too big", '{"product": "a", "quantity": 1, "price": 1e12}', JSON, 422, "less"),
    ("price 3 decimals", '{"product": "a", "quantity": 1, "price": 1.005}', JSON, 422, "decimal"),
    ("product empty", '{"product": "", "quantity": 1, "price": 1}', JSON, 422, "product"),
    ("product blank", '{"product": "   ", "quantity": 1, "price": 1}', JSON, 422, "product"),
    (
        "product 10k chars",
        '{"product": "' + "x" * 10_000 + '", "quantity": 1, "price": 1}',
        JSON,
        422,
        "at most 200",
    ),
    (
        "unknown field",
        '{"product": "a", "quantity": 1, "price": 1, "color": "red"}',
        JSON,
        422,
        "unknown field",
    ),
    ("2 MB body", '{"product": "' + "x" * 2_000_000 + '"}', JSON, 413, "too large"),
    ("text/plain", OK, {"Content-Type": "text/plain"}, 415, "content type"),
    ("form", "product=a", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "JSON"),
    ("no content type", OK, {}, 415, "content type"),
    ("not utf-8", b'{"product": "\xff\xfe", "quantity": 1, "price": 1}', JSON, 400, "JSON"),
    ("utf-16", OK.encode("utf-16"), JSON, 400, "not valid JSON"),
    ("10,000-deep arrays", "[" * 10_000 + "]" * 10_000, JSON, 400, "nested too deeply"),
    ("10,000-deep objects", '{"a":' * 10_000 + "1" + "}" * 10_000, JSON, 400, "nested too deeply"),
    (
        "repeated key",
        '{"product": "x", "quantity": 1, "quantity": 5, "price": 1}',
        JSON,
        422,
        "given twice",
    ),
    ("product NUL", '{"product": "a\\u0000b", "quantity": 1, "price": 1}', JSON, 422, "NUL"),
    (
        "repeated key behind 401 brackets",
        '{"quantity":1,"product":"' + "[" * 401 + '","quantity":9,"product":"x","price":1}',
        JSON,
        422,
        "given twice",
    ),
    ("gzip", gzip.compress(OK.encode()), JSON | {"Content-Encoding": "gzip"}, 415, "gzip"),
    ("br, body not compressed", OK, JSON | {"Content-Encoding": "br"}, 415, "br"),
    ("long encoding", OK, JSON | {"Content-Encoding": "x" * 9000}, 415, "encoding"),
    ("long content type", OK, {"Content-Type": "text/" + "x" * 9000}, 415, "content type"),
]


@pytest.fixture
def raw_client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, timeout=10) as c:
        yield c


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "body", "headers", "status", "word"), CASES, ids=[c[0] for c in CASES]
)
def test_rejected_and_nothing_written(
    raw_client: httpx.Client,
    pg: psycopg.Connection,
    rds: redis.Redis,
    name: str,
    body: bytes | str,
    headers: dict[str, str],
    status: int,
    word: str,
) -> None:
    content = body.encode() if isinstance(body, str) else body
    res = raw_client.post("/orders", content=content, headers=headers)
    assert res.status_code == status, res.text[:300]
    assert res.headers["content-type"].startswith("application/json")
    payload = res.json()
    assert set(payload) == {"error", "details"}
    assert word.lower() in res.text.lower()
    assert len(res.content) < 2000, "the error must not echo a huge input back"
    assert counts(pg, rds) == {"orders": 0, "jobs": 0, "queue": 0}


def test_chunked_oversized_body_is_refused(
    raw_client: httpx.Client, pg: psycopg.Connection, rds: redis.Redis
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"product": "'
        for _ in range(40):
            yield b"x" * 50_000
        yield b'", "quantity": 1, "price": 1}'

    res = raw_client.post("/orders", content=chunks(), headers=JSON)
    assert res.status_code == 413
    assert counts(pg, rds) == {"orders": 0, "jobs": 0, "queue": 0}


def test_field_errors_name_each_field(raw_client: httpx.Client) -> None:
    res = raw_client.post("/orders", content="{}", headers=JSON)
    fields = {d["field"] for d in res.json()["details"]}
    assert fields == {"product", "quantity", "price"}


def test_a_valid_order_after_bad_ones_is_accepted(raw_client: httpx.Client) -> None:
    assert raw_client.post("/orders", content="[", headers=JSON).status_code == 400
    res = raw_client.post("/orders", content=OK, headers=JSON)
    assert res.status_code == 202
    assert res.json()["orderId"] == 1


def test_a_repeated_key_is_named(raw_client: httpx.Client) -> None:
    body = '{"product": "x", "quantity": 1, "quantity": 5, "price": 1}'
    res = raw_client.post("/orders", content=body, headers=JSON)
    assert res.status_code == 422
    assert [d["field"] for d in res.json()["details"]] == ["quantity"]


def test_a_whole_number_written_with_a_point_is_a_quantity(
    raw_client: httpx.Client, pg: psycopg.Connection
) -> None:
    # JSON Schema (and so the OpenAPI document) counts 1380.0 as an integer.
    body = '{"product": "x", "quantity": 1380.0, "price": 1}'
    res = raw_client.post("/orders", content=body, headers=JSON)
    assert res.status_code == 202, res.text
    assert pg.execute("SELECT quantity FROM orders").fetchall() == [(1380,)]


def test_identity_is_no_content_encoding(raw_client: httpx.Client) -> None:
    for coding in ("identity", "Identity", ""):
        headers = JSON | {"Content-Encoding": coding}
        assert raw_client.post("/orders", content=OK, headers=headers).status_code == 202


def test_a_415_names_the_encoding(raw_client: httpx.Client) -> None:
    headers = JSON | {"Content-Encoding": "gzip, identity"}
    res = raw_client.post("/orders", content=gzip.compress(OK.encode()), headers=headers)
    assert res.status_code == 415
    assert res.json() == {
        "error": "unsupported content encoding gzip: send the body uncompressed",
        "details": [{"contentEncoding": "gzip", "expected": "identity"}],
    }


def test_the_price_stored_is_the_price_written(
    raw_client: httpx.Client, pg: psycopg.Connection
) -> None:
    for price in ("19.99", "9999999999.99", "0.01", "1.50", "1999e-2"):
        body = '{"product": "x", "quantity": 1.0, "price": ' + price + "}"
        assert raw_client.post("/orders", content=body, headers=JSON).status_code == 202
    stored = pg.execute("SELECT quantity, price::text FROM orders ORDER BY id").fetchall()
    assert stored == [
        (1, "19.99"), (1, "9999999999.99"), (1, "0.01"), (1, "1.50"), (1, "19.99")
    ]  # fmt: skip
