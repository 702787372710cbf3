"""What a valid order is, and the JSON error bodies for everything that is not.

Every rule of an order is also in its JSON Schema (OpenAPI's request body), spelled so that
the schema and this validator agree on every value: a client that validates against the
schema is never refused here, and nothing the schema forbids is accepted.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Annotated, Any

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

from mqlab.system.api import json_body

#: A larger body is refused with 413 before it is read in full.
MAX_BODY_BYTES = 64 * 1024
MAX_PRODUCT_CHARS = 200
MAX_QUANTITY = 1_000_000
#: numeric(12,2) holds up to this.
MAX_PRICE = 9_999_999_999.99
_MAX_PRICE = Decimal(repr(MAX_PRICE))

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


#: Beyond this a number's size no longer matters (it is out of range either way): numbers
#: are clamped to it before int() or float(), so that 1e999999999 costs nothing.
_HUGE = Decimal(10**20)
_CENT = Decimal("0.01")


def _as_written(value: Any) -> Decimal | None:
    """A number with a fraction or an exponent as written: json_body reads it as a Decimal,
    or as a float when the float is that number (then its shortest repr spells it)."""
    if type(value) is Decimal:
        return value
    if type(value) is float and math.isfinite(value):
        return Decimal(repr(value))
    return None  # an int, NaN or Infinity, or no number: the field's own checks answer


def _clamped(value: Decimal) -> Decimal:
    return min(max(value, -_HUGE), _HUGE)


def _whole_number(value: Any) -> Any:
    # JSON has one number type: 1380.0 is the integer 1380 for JSON Schema (and for the
    # schema's readers), so it is one here too. 1.5, 0.99999999999999999999, "1" and true
    # stay refused (strict): the number is judged as written, not as a float rounds it.
    exact = _as_written(value)
    if exact is not None and exact == exact.to_integral_value():
        return int(_clamped(exact))
    return value


def _cents(value: Any) -> Any:
    # The number as written, as JSON Schema's multipleOf 0.01 counts it: 19.99 and 1.50 pass,
    # 1.005, 0.1 + 0.2 and 1e-400 do not (numeric(12,2) would store another number). Beyond
    # the bounds it is left to the range check, which names them (a float that large holds
    # its sign and size; a tiny one would not, and has too many decimals anyway).
    exact = _as_written(value)
    if exact is None:
        return value
    if exact.copy_abs() > _MAX_PRICE:  # copy_abs: abs() rounds to the context, and overflows
        return float(_clamped(exact))
    if exact != exact.quantize(_CENT):
        raise PydanticCustomError("decimal_places", "at most 2 decimal places")
    return float(exact)  # the nearest float, which float8 to numeric(12,2) stores exactly


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
        Field(
            ge=1,
            le=MAX_QUANTITY,
            description="how many, a whole number as written (1380.0 counts as 1380)",
        ),
        BeforeValidator(_whole_number),
    ]
    price: Annotated[
        float,
        Field(
            ge=0,
            le=MAX_PRICE,
            allow_inf_nan=False,
            description="unit price, at most 2 decimal places as written (stored exactly)",
            json_schema_extra={"multipleOf": 0.01},
        ),
        BeforeValidator(_cents),
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


#: An error quotes at most this many characters of what was sent.
MAX_ECHO = 64


def echo(value: Any) -> Any:
    """Something the client sent, as an error quotes it: whole when short, else its first
    MAX_ECHO characters and an ellipsis (an answer must not send a huge input back)."""
    text = value if type(value) is str else str(value)
    return value if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "…"


def check_content_type(content_type: str | None) -> None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise BadRequest(
            415,
            "unsupported content type: send the order as JSON",
            [{"contentType": echo(content_type or None), "expected": "application/json"}],
        )


def check_content_encoding(content_encoding: str | None) -> None:
    """415 for a body in a content coding: the API decodes none (`identity` is no coding)."""
    codings = [c.strip() for c in (content_encoding or "").split(",")]
    unsupported = ", ".join(c for c in codings if c and c.lower() != "identity")
    if unsupported:
        raise BadRequest(
            415,
            f"unsupported content encoding {echo(unsupported)}: send the body uncompressed",
            [{"contentEncoding": echo(unsupported), "expected": "identity"}],
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
        loc = echo(".".join(str(part) for part in err["loc"]) or "body")  # an unknown key
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field (the fields are product, quantity and price)"
        elif err["type"] == "model_type":
            message = "the body must be a JSON object with product, quantity and price"
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out


def decode_json(body: bytes) -> Any:
    """A request body as Python values (json_body.read): BadRequest 400 when it is not JSON,
    422 on a key given twice in one object (which value was meant cannot be known)."""
    try:
        return json_body.read(body)
    except json_body.RepeatedKey as exc:
        detail = {"field": echo(exc.key), "message": "given twice or more: send each once"}
        raise BadRequest(422, "invalid order", [detail | {"type": "repeated_key"}]) from None
    except json_body.NotJSON as exc:
        raise BadRequest(400, "the body is not valid JSON", [{"message": str(exc)}]) from None


def parse_order(body: bytes) -> OrderIn:
    """Bytes of a POST /orders body to a valid order, or BadRequest (400/422)."""
    if not body.strip():
        raise BadRequest(400, "empty body: send a JSON object with product, quantity and price")
    data = decode_json(body)
    try:
        return OrderIn.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(422, "invalid order", field_errors(exc)) from None
