"""What a valid order is, without servers: the parser's edges, and schema and validator agreeing."""

from __future__ import annotations

import json
import sys
from typing import Any

import jsonschema_rs
import orjson
import pytest

from mqlab.system.api.json_body import MAX_DEPTH
from mqlab.system.api.validation import (
    MAX_PRICE,
    WHITESPACE,
    BadRequest,
    OrderIn,
    decode_json,
    parse_order,
)


def refusal(body: bytes) -> tuple[int, list[Any]]:
    with pytest.raises(BadRequest) as caught:
        parse_order(body)
    return caught.value.status, caught.value.details


def test_whitespace_is_what_str_strip_removes() -> None:
    assert "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()) == WHITESPACE


@pytest.mark.parametrize("depth", [1025, 10_000, 32_000])
def test_deep_nesting_is_a_400(depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        assert refusal(body) == (400, [{"message": "nested too deeply"}])


@pytest.mark.parametrize("depth", [MAX_DEPTH - 1, MAX_DEPTH, 500, 1000, 1024, 5000])
def test_nesting_gets_the_same_answer_on_every_python(depth: int) -> None:
    # The stdlib parser's recursion limit differs between Python versions (1,000 levels fail
    # on 3.11, 5,000 pass on 3.13): it never sees a body nested deeper than MAX_DEPTH, whether
    # orjson reads it (no NaN) or not (NaN).
    nested = b"[" * depth + b"]" * depth
    too_deep = depth + 1 > MAX_DEPTH  # inside the top-level object
    status, details = refusal(b'{"price": NaN, "x": ' + nested + b"}")
    if too_deep:
        assert (status, details) == (400, [{"message": "nested too deeply"}])
    else:
        assert status == 422
        assert {d["field"] for d in details} == {"price", "x", "product", "quantity"}
    body = b'{"product": "x", "quantity": 1, "price": 1, "x": ' + nested + b', "x": 1}'
    expected = (400, [{"message": "nested too deeply"}]) if too_deep else (422, [REPEATED_X])
    assert refusal(body) == expected


UNKNOWN = {
    "field": "x",
    "message": "unknown field (the fields are product, quantity and price)",
    "type": "extra_forbidden",
}


def test_a_product_of_brackets_is_still_checked_for_repeated_keys() -> None:
    body = orjson.dumps({"product": "{[" * 100, "quantity": 1, "price": 1})
    assert parse_order(body).product == "{[" * 100
    repeated = body[:-1] + b',"price":2}'
    assert refusal(repeated) == (422, [REPEATED | {"field": "price"}])


REPEATED = {"message": "given twice or more: send each once", "type": "repeated_key"}
REPEATED_X = REPEATED | {"field": "x"}


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"product":"x","quantity":1,"quantity":5,"price":1}', "quantity"),
        (b'{"product":"x","quantity":1,"price":1,"product":"y"}', "product"),
        (b'{"product":"x","quantity":1,"price":NaN,"price":2}', "price"),  # the stdlib path
        (b'{"product":"x","quantity":1,"price":1,"a":{"b":1,"b":2}}', "b"),  # nested
        (b'{"product":"x","quantity":1,"price":1,"qu\\u0061ntity":2}', "quantity"),  # escaped
        (b'{"product":"\\"x\\"","quantity":1,"quantity":1,"price":1}', "quantity"),
    ],
)
def test_a_key_given_twice_is_a_422_naming_it(body: bytes, key: str) -> None:
    status, details = refusal(body)
    assert status == 422
    assert details == [
        {"field": key, "message": "given twice or more: send each once", "type": "repeated_key"}
    ]


@pytest.mark.parametrize(
    "body",
    [
        b'{"product": "Laptop", "quantity": 1, "price": 1200}',
        b'{"product": "say \\"hi\\"", "quantity": 1, "price": 1200}',  # escaped quotes
        b'{"product": "a\\u0022b", "quantity": 1, "price": 1200}',
        b'{"product": "\\"\\"\\"", "quantity": 1, "price": 1200}',
    ],
)
def test_no_repeated_key_is_found_where_there_is_none(body: bytes) -> None:
    assert parse_order(body).quantity == 1
    assert decode_json(body) == orjson.loads(body)


def test_whole_numbers_are_quantities() -> None:
    assert parse_order(b'{"product":"x","quantity":1380.0,"price":1}').quantity == 1380
    assert parse_order(b'{"product":"x","quantity":1.38e3,"price":1}').quantity == 1380
    for bad in (b"1.5", b"true", b'"1"', b"1e23", b"0.0"):
        body = b'{"product":"x","quantity":' + bad + b',"price":1}'
        status, details = refusal(body)
        assert (status, details[0]["field"]) == (422, "quantity"), bad


def test_product_is_trimmed_after_its_length_is_checked() -> None:
    assert parse_order(b'{"product":" Laptop\\t","quantity":1,"price":1}').product == "Laptop"
    over = orjson.dumps({"product": " " + "x" * 200, "quantity": 1, "price": 1})
    assert refusal(over)[1][0]["type"] == "string_too_long"


# Values at the edges of each rule: the schema (read by jsonschema_rs, the validator
# schemathesis uses) and the API must say the same yes or no to each.
PRODUCTS: list[Any] = [
    "x", " x ", "", " ", "x" * 200, "x" * 201, "a\x00b", "\x00", "\ufeff", "\u200b", "é",
    "\U0001f600", "\n", 7, None,
    *WHITESPACE, *(c + "y" for c in WHITESPACE),
]  # fmt: skip
QUANTITIES: list[Any] = [1, 0, -1, 1380.0, 1.5, 1_000_000, 1_000_001, 1e6, True, "1", 2**70]
PRICES: list[Any] = [
    0, -0.0, 0.29, 19.99, 1.005, 0.1 + 0.2, -0.01, 1e-7, 1200, MAX_PRICE, MAX_PRICE + 0.01,
    123456.78, 9_999_999_999.9, 1e10, "1", True,
]  # fmt: skip


def _agree(order: dict[str, Any]) -> tuple[bool, bool]:
    spec = OrderIn.model_json_schema()
    by_schema = jsonschema_rs.validator_for(spec).is_valid(order)
    try:
        parse_order(json.dumps(order).encode())
        by_api = True
    except BadRequest:
        by_api = False
    return by_schema, by_api


@pytest.mark.parametrize("product", PRODUCTS, ids=repr)
def test_schema_and_validator_agree_on_products(product: Any) -> None:
    by_schema, by_api = _agree({"product": product, "quantity": 1, "price": 1})
    assert by_schema == by_api


@pytest.mark.parametrize("quantity", QUANTITIES, ids=repr)
def test_schema_and_validator_agree_on_quantities(quantity: Any) -> None:
    by_schema, by_api = _agree({"product": "x", "quantity": quantity, "price": 1})
    assert by_schema == by_api


@pytest.mark.parametrize("price", PRICES, ids=repr)
def test_schema_and_validator_agree_on_prices(price: Any) -> None:
    by_schema, by_api = _agree({"product": "x", "quantity": 1, "price": price})
    assert by_schema == by_api


def test_schema_and_validator_agree_on_unknown_and_missing_fields() -> None:
    assert _agree({"product": "x", "quantity": 1, "price": 1, "color": "red"}) == (False, False)
    assert _agree({"product": "x", "quantity": 1}) == (False, False)


@pytest.mark.parametrize(
    ("field", "written", "error"),
    [
        ("quantity", "0.99999999999999999999", "int_type"),  # 1 as a float
        ("quantity", "1.00000000000000000001", "int_type"),
        ("quantity", "1e999999999", "less_than_equal"),  # no int of a billion digits made
        ("price", "1e-400", "decimal_places"),  # 0.0 as a float
        ("price", "19.990000000000000001", "decimal_places"),  # 19.99 as a float
        ("price", "0.0000000000000000000001", "decimal_places"),
        ("price", "1e400", "less_than_equal"),  # infinity as a float, but finite as written
        ("price", "-1e-400", "decimal_places"),
        ("price", "1e99999999999999", "less_than_equal"),  # beyond the Decimal context too
        ("price", "-1e99999999999999", "greater_than_equal"),
        ("quantity", "-1e99999999999999", "greater_than_equal"),
        ("quantity", "1e-99999999999999", "int_type"),
    ],
)
def test_numbers_are_judged_as_written(field: str, written: str, error: str) -> None:
    fields = {"product": '"x"', "quantity": "1", "price": "1"} | {field: written}
    body = "{" + ",".join(f'"{k}": {v}' for k, v in fields.items()) + "}"
    status, details = refusal(body.encode())
    assert (status, [(d["field"], d["type"]) for d in details]) == (422, [(field, error)])


@pytest.mark.parametrize(
    ("written", "quantity", "price"),
    [
        ('"quantity": 1.0, "price": 1.50', 1, 1.5),
        ('"quantity": 1e0, "price": 1.500', 1, 1.5),
        ('"quantity": 100e-2, "price": 1999e-2', 1, 19.99),
        ('"quantity": 1000000.000, "price": 9999999999.99', 1_000_000, MAX_PRICE),
        ('"quantity": 1, "price": 0e-400', 1, 0.0),
    ],
)
def test_whole_numbers_and_cents_in_any_spelling_are_accepted(
    written: str, quantity: int, price: float
) -> None:
    order = parse_order(('{"product": "x", ' + written + "}").encode())
    assert (order.quantity, order.price) == (quantity, price)
    assert type(order.quantity) is int


def test_errors_quote_at_most_64_characters_of_the_input() -> None:
    key = "k" * 9000
    for body in (
        orjson.dumps({"product": "x", "quantity": 1, "price": 1, key: 1}),
        b'{"product": "x", "quantity": 1, "price": 1, "'
        + key.encode() * 2
        + b'": 1, "'
        + key.encode() * 2
        + b'": 2}',
    ):
        status, details = refusal(body)
        assert status == 422
        assert [d["field"] for d in details] == ["k" * 64 + "…"]
