"""One reading of a body decides: orjson's fast path and the stdlib authority never disagree."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from mqlab.system.api import json_body
from mqlab.system.api.validation import BadRequest, OrderIn, field_errors, parse_order

Reader = Callable[[bytes], Any]


def decision(read: Reader, body: bytes) -> tuple[Any, ...]:
    """What POST /orders would answer, as data: the order, or the refusal and its details."""
    try:
        data = read(body)
    except json_body.RepeatedKey as exc:
        return ("repeated key", exc.key)
    except json_body.NotJSON as exc:
        return ("not JSON", str(exc))
    try:
        return ("order", OrderIn.model_validate(data).model_dump())
    except ValidationError as exc:
        return ("invalid", field_errors(exc))


# Bodies written as text, so that their spelling (escapes, number literals, spaces) varies.
_SPACE = st.sampled_from(["", " ", "\n", "\t "])


def _number(int_digits: int, frac_digits: int, exponent: bool) -> st.SearchStrategy[str]:
    def spell(parts: tuple[bool, int, str | None, int | None]) -> str:
        negative, whole, fraction, power = parts
        text = ("-" if negative else "") + str(whole)
        text += "" if fraction is None else "." + fraction
        return text + ("" if power is None else f"e{power}")

    return st.tuples(
        st.booleans(),
        st.integers(0, 10**int_digits - 1),
        st.none() | st.text("0123456789", min_size=1, max_size=frac_digits),
        st.none() | st.integers(-400, 400) | st.sampled_from([-(10**14), 10**14])
        if exponent
        else st.none(),
    ).map(spell)


_PIECE = st.one_of(
    st.sampled_from(list('abq0159 :,.eE[]{}"\\')).map(
        lambda c: {'"': '\\"', "\\": "\\\\"}.get(c, c)
    ),
    st.sampled_from(["\\u0071", "\\u0022", "\\n", "\\/", "\\u005c", "é", "[[[[", '\\"\\"']),
)
_STRING = st.lists(_PIECE, max_size=12).map(lambda parts: '"' + "".join(parts) + '"')
_KEY = st.one_of(
    st.sampled_from(['"product"', '"quantity"', '"price"', '"x"', '"\\u0071uantity"']),
    st.sampled_from(['"pr\\u006fduct"', '"qu\\u0061ntity"', '"\\"q"', '"[{"']),
    _STRING,
)
_SCALAR = st.one_of(
    _STRING, _number(22, 22, True), st.sampled_from(["true", "null", "NaN", "-Infinity"])
)
# Near the fast path's edges: no escape, numbers around 12 digits and 2 decimals.
_PLAIN_KEY = st.sampled_from(['"product"', '"quantity"', '"price"', '"x"'])
_PLAIN_STRING = st.text("ab1 :,.eE[]{}é", max_size=8).map(lambda s: f'"{s}"')
_PLAIN_SCALAR = st.one_of(
    _PLAIN_STRING, _number(3, 3, False), _number(14, 3, True), st.just("true")
)


def _object(values: st.SearchStrategy[str], keys: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    pair = st.tuples(_SPACE, keys, _SPACE, values).map(lambda p: f"{p[0]}{p[1]}:{p[2]}{p[3]}")
    return st.lists(pair, max_size=6).map(lambda pairs: "{" + ",".join(pairs) + "}")


_VALUE = st.recursive(
    _SCALAR,
    lambda inner: (
        _object(inner, _KEY) | st.lists(inner, max_size=4).map(lambda v: f"[{','.join(v)}]")
    ),
    max_leaves=8,
)


def _agree(body: bytes) -> None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    plain = data is not None and json_body._plain(body, data)
    event("fast path" if plain else "authority")
    if plain:
        # The same values: each float is the number as written (its shortest repr spells it).
        as_written = {k: Decimal(repr(v)) if type(v) is float else v for k, v in data.items()}
        assert as_written == json_body._authority(body)
    assert decision(json_body.read, body) == decision(json_body._authority, body)


# Examples per run: each run draws new ones (and Hypothesis replays any that failed before), so
# many runs cover more than one long one; 1500 and 1000 were 18 s of the suite's CPU.
@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(_object(_PLAIN_SCALAR, _PLAIN_KEY | _PLAIN_STRING).map(str.encode))
def test_the_fast_path_reads_flat_objects_as_the_authority_does(body: bytes) -> None:
    _agree(body)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_object(_SCALAR, _KEY), _object(_VALUE, _KEY), _VALUE).map(str.encode))
def test_escapes_nesting_and_brackets_get_the_authoritys_answer(body: bytes) -> None:
    _agree(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"product":"Item12345","quantity":1,"price":10.0}',  # what `mqlab bench` sends
        b'{"product": "Laptop", "quantity": 3, "price": 1200}',
        b'{"product":"x","quantity":1000000,"price":9999999999.99}',
    ],
)
def test_the_usual_orders_take_the_fast_path(body: bytes) -> None:
    assert json_body._plain(body, orjson.loads(body))


def test_brackets_in_a_product_do_not_hide_a_repeated_key() -> None:
    # The attack of issue 17: 401 brackets made the body "not order-shaped", and the duplicate
    # check was skipped (202, quantity 9 stored).
    body = b'{"quantity":1,"product":"' + b"[" * 401 + b'","quantity":9,"product":"x","price":1}'
    with pytest.raises(BadRequest) as caught:
        parse_order(body)
    assert caught.value.status == 422
    assert caught.value.details == [
        {
            "field": "quantity",
            "message": "given twice or more: send each once",
            "type": "repeated_key",
        }
    ]


@pytest.mark.parametrize("opener", [b"[", b"{"])
def test_brackets_anywhere_never_skip_the_check(opener: bytes) -> None:
    many = opener * 5000
    for body in (
        b'{"x":"' + many + b'","product":"x","quantity":1,"quantity":2,"price":1}',
        b'{"product":"x","quantity":1,"price":1,"quantity":2,"y":["' + many + b'"]}',
    ):
        with pytest.raises(BadRequest) as caught:
            parse_order(body)
        assert (caught.value.status, caught.value.details[0]["type"]) == (422, "repeated_key")


def test_numbers_keep_their_spelling_off_the_fast_path() -> None:
    data = json_body.read(b'{"a": 0.99999999999999999999, "b": 1e-400, "c": 1.0}')
    assert data == {"a": Decimal("0.99999999999999999999"), "b": Decimal("1e-400"), "c": 1}
    assert type(data["c"]) is Decimal
