"""What a valid order is, and the JSON error bodies for everything that is not.

Every rule of an order is also in its JSON Schema (OpenAPI's request body), spelled so that
the schema and this validator agree on every value: a client that validates against the
schema is never refused here, and nothing the schema forbids is accepted.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Annotated, Any

import orjson
from fastapi.responses import JSONResponse
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import PydanticCustomError

#: A larger body is refused with 413 before it is read in full.
MAX_BODY_BYTES = 64 * 1024
MAX_PRODUCT_CHARS = 200
MAX_QUANTITY = 1_000_000
#: numeric(12,2) holds up to this.
MAX_PRICE = 9_999_999_999.99

#: The characters Python's str.strip() removes (those whose isspace() is true), spelled out
#: so that the schema's pattern can name the same ones (a test checks the list).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
    "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_CLASS = "".join(f"\\u{ord(c):04x}" for c in WHITESPACE)
#: A product: no NUL anywhere (PostgreSQL text cannot hold it) and at least one character
#: that is not whitespace. ECMA-262 syntax for the schema; Python's re reads it the same way.
PRODUCT_PATTERN = rf"^[^\u0000]*[^\u0000{_CLASS}][^\u0000]*$"
_PRODUCT_RE = re.compile(PRODUCT_PATTERN)


def _product(value: str) -> str:
    if _PRODUCT_RE.fullmatch(value) is None:
        if "\x00" in value:
            raise PydanticCustomError("nul", "must not contain NUL characters")
        raise PydanticCustomError("blank", "must contain a character other than whitespace")
    # Stored without the surrounding blanks; the lengths were checked on the text as sent,
    # as the schema's minLength and maxLength count it.
    return value.strip(WHITESPACE)


def _whole_number(value: Any) -> Any:
    # JSON has one number type: 1380.0 is the integer 1380 for JSON Schema (and for the
    # schema's readers), so it is one here too. 1.5, "1" and true stay refused (strict).
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def _cents(value: float) -> float:
    # The decimal as spelled (the shortest repr that reads back as this float), as JSON
    # Schema's multipleOf 0.01 counts it: 19.99 passes, 1.005 and 0.1 + 0.2 do not.
    if Decimal(repr(value)).as_tuple().exponent < -2:  # type: ignore[operator]
        raise PydanticCustomError("decimal_places", "at most 2 decimal places")
    return value


class OrderIn(BaseModel):
    """An order. Unknown fields are rejected, so that a typo is not silently lost."""

    model_config = ConfigDict(extra="forbid", strict=True, title="OrderIn")

    product: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_PRODUCT_CHARS,
            description="what is ordered: not blank, no NUL character; stored trimmed",
            json_schema_extra={"pattern": PRODUCT_PATTERN},
        ),
        AfterValidator(_product),
    ]
    quantity: Annotated[
        int,
        Field(ge=1, le=MAX_QUANTITY, description="how many (1380.0 counts as 1380)"),
        BeforeValidator(_whole_number),
    ]
    price: Annotated[
        float,
        Field(
            ge=0,
            le=MAX_PRICE,
            allow_inf_nan=False,
            description="unit price, at most 2 decimal places",
            json_schema_extra={"multipleOf": 0.01},
        ),
        AfterValidator(_cents),
    ]


class BadRequest(Exception):
    """A request we refuse: status code, message, details."""

    def __init__(self, status: int, error: str, details: list[Any] | None = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details or []


def error_response(
    status: int, error: str, details: list[Any] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error body shape: {"error": "...", "details": [...]}."""
    return JSONResponse({"error": error, "details": details or []}, status, headers=headers)


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise BadRequest(
            415,
            "unsupported content type: send the order as JSON",
            [{"contentType": content_type or None, "expected": "application/json"}],
        )


def check_length(content_length: str | None) -> None:
    if content_length is None:
        return
    try:
        size = int(content_length)
    except ValueError:
        raise BadRequest(400, "invalid Content-Length header") from None
    if size > MAX_BODY_BYTES:
        raise BadRequest(
            413, "request body too large", [{"maxBytes": MAX_BODY_BYTES, "gotBytes": size}]
        )


def field_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as [{"field", "message", "type"}], without echoing the whole input."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(part) for part in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (the fields are product, quantity and price)"
        elif err["type"] == "model_type":
            message = "the body must be a JSON object with product, quantity and price"
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out


def _repeated_key(key: str) -> BadRequest:
    return BadRequest(
        422,
        "invalid order",
        [{"field": key, "message": "given twice or more: send each once", "type": "repeated_key"}],
    )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _repeated_key(key)
            seen.add(key)
    return obj


def _too_deep() -> BadRequest:
    return BadRequest(400, "the body is not valid JSON", [{"message": "nested too deeply"}])


#: More `[` and `{` bytes than any valid order holds (one object, and a product of at most 200
#: characters). The stdlib parser, which recurses once per level, is never given such a body:
#: its recursion limit differs between Python versions (1,000 levels fail on 3.11, 5,000 pass
#: on 3.13), and the answer to a body must not.
MAX_BRACKETS = 2 * MAX_PRODUCT_CHARS


def _order_shaped(body: bytes) -> bool:
    return body.count(b"[") + body.count(b"{") <= MAX_BRACKETS


def _stdlib_loads(body: bytes) -> Any:
    """The stdlib parser, refusing repeated keys (orjson keeps the last one and has no hook).

    Only on cold paths, and for order-shaped bodies: it is about 7 times slower than orjson
    (2.7 against 0.4 µs for an order).
    """
    return json.loads(body.decode("utf-8"), object_pairs_hook=_unique_keys)


def _may_repeat_keys(body: bytes, data: dict[str, Any]) -> bool:
    """False when the body cannot hold a repeated key; True when it might (then check).

    Why: a cheap proof for the usual order. Every `"` of a JSON text delimits a string or is
    escaped inside one; an object of n keys whose values are s strings and no containers has
    2n + 2s of them when no key repeats, and at least two more when one does.
    """
    quotes = 2 * len(data)
    for value in data.values():
        kind = type(value)
        if kind is str:
            quotes += 2
        elif kind is dict or kind is list:
            return True
    return body.count(b'"') != quotes


def decode_json(body: bytes) -> Any:
    """A request body as Python values: BadRequest 400 when it is not JSON, 422 on a key
    given twice in one object (which value was meant cannot be known)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg:
            raise _too_deep() from None
        invalid = BadRequest(400, "the body is not valid JSON", [{"message": str(exc)}])
        if not _order_shaped(body):
            raise invalid from None
        # What orjson refuses but the stdlib reads: NaN and Infinity literals and numbers
        # too big for a float, so that they are refused with a message about their field.
        try:
            return _stdlib_loads(body)
        except (ValueError, UnicodeDecodeError):
            raise invalid from None
    # A body that is not order-shaped is refused anyway: no need to look for a repeated key.
    if type(data) is dict and _may_repeat_keys(body, data) and _order_shaped(body):
        _stdlib_loads(body)
    return data


def parse_order(body: bytes) -> OrderIn:
    """Bytes of a POST /orders body to a valid order, or BadRequest (400/422)."""
    if not body.strip():
        raise BadRequest(400, "empty body: send a JSON object with product, quantity and price")
    data = decode_json(body)
    try:
        return OrderIn.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(422, "invalid order", field_errors(exc)) from None
