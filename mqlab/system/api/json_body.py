"""A request body read as JSON: one reading decides, whatever the body looks like.

The authority is the stdlib parser, which shows every key and every number as written: a key
given twice in one object is refused (which value was meant cannot be known; orjson keeps the
last one silently), and a number with a fraction or an exponent is read as a Decimal (as a
float, 0.99999999999999999999 is 1 and 1e-400 is 0). orjson answers alone only for a body
that it provably reads the same (`_plain`); every other body, valid or not, goes to the
authority, and so does the decision that it is not JSON.
"""

from __future__ import annotations

import json
import re
from array import array
from decimal import Decimal
from itertools import accumulate
from typing import Any

import orjson

#: Arrays and objects nested deeper than this are refused before the stdlib parser sees them:
#: it recurses once per level, and its limit differs between Python versions (1,000 levels
#: fail on 3.11, 5,000 pass on 3.13), when the answer to a body must not. An order is flat.
MAX_DEPTH = 100


class NotJSON(Exception):
    """The body is not a JSON text we read; the message says why."""


class RepeatedKey(Exception):
    """A key given twice or more in one object."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def read(body: bytes) -> Any:
    """The body as Python values; numbers with a fraction or an exponent as Decimal, unless
    the body is plain (then they are floats that equal the numbers as written)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # the authority says why (or reads NaN, Infinity and numbers no float holds)
    else:
        if _plain(body, data):
            return data
    return _authority(body)


#: A number that a float may not hold as written: more than 12 digits before its point, more
#: than 2 after it, or an exponent (a float is the number as written when it has at most 15
#: significant digits and no exponent: then none overflows, underflows or rounds). In a flat
#: object every number is a value after a colon; a string that looks like one costs only the
#: slow path. Anchored on the colon, which the regex engine finds fast.
_LONG_NUMBER = re.compile(rb":[ \t\n\r]*-?[0-9]+(?:[0-9]{12}|(?:\.[0-9]*)?[eE]|\.[0-9]{3})")


def _plain(body: bytes, data: Any) -> bool:
    """True when orjson's reading is the authority's: an object of strings and short numbers
    with no key given twice. False when it may not be (then the authority reads the body).

    Why the count proves it: every `"` of a JSON text delimits a string or is escaped inside
    one, so an object whose n values include s strings and no containers has 2n + 2s of them
    when no key repeats, and more when one does (at least the dropped key's two). Its numbers
    are then values after a colon, which _LONG_NUMBER sees. An escaped key ("\\u0071uantity")
    is read alike by both parsers; only a repeat matters, and the count sees it.
    """
    if type(data) is not dict or _LONG_NUMBER.search(body) is not None:
        return False
    quotes = 2 * len(data)
    for value in data.values():
        kind = type(value)
        if kind is str:
            quotes += 2
        elif kind is dict or kind is list:
            return False
    return body.count(b'"') == quotes


def _authority(body: bytes) -> Any:
    """The stdlib parser's reading: about 10 times slower than orjson, off the fast path."""
    if _too_deep(body):
        raise NotJSON("nested too deeply")
    try:
        text = body.decode("utf-8")  # UTF-8 only (json.loads would also guess UTF-16 or 32)
        return json.loads(text, object_pairs_hook=_unique_keys, parse_float=Decimal)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int of 4,300 digits
        raise NotJSON(str(exc)) from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise RepeatedKey(key)
            seen.add(key)
    return obj


#: A JSON string, escapes included (unrolled, so that matching is linear).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
#: `[` and `{` to +1, `]` and `}` to -1 (as signed bytes); every other byte deleted.
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _too_deep(body: bytes) -> bool:
    """Whether the arrays and objects outside strings nest deeper than MAX_DEPTH.

    In C-speed steps (a body of 64 KiB of brackets takes about 2 ms); for a malformed body, an
    upper bound of how deep the stdlib parser would get before it stops.
    """
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    steps = _STRING.sub(b"", body).translate(_STEPS, _NOT_BRACKETS)
    return max(accumulate(array("b", steps)), default=0) > MAX_DEPTH
