"""What a valid order is, and the JSON error bodies for everything that is not."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Annotated, Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

#: A larger body is refused with 413 before it is read in full.
MAX_BODY_BYTES = 64 * 1024
MAX_PRODUCT_CHARS = 200
MAX_QUANTITY = 1_000_000
#: numeric(12,2) holds up to this.
MAX_PRICE = 9_999_999_999.99


class OrderIn(BaseModel):
    """The body of POST /orders. Unknown fields are rejected, so a typo is not silently lost."""

    model_config = ConfigDict(extra="forbid", strict=True)

    product: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_PRODUCT_CHARS)
    ]
    quantity: Annotated[int, Field(ge=1, le=MAX_QUANTITY)]
    price: Annotated[float, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False)]


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


def parse_order(body: bytes) -> OrderIn:
    """Bytes of a POST /orders body to a valid order, or BadRequest (400/422)."""
    if not body.strip():
        raise BadRequest(400, "empty body: send a JSON object with product, quantity and price")
    try:
        # The stdlib parser turns NaN/Infinity literals into floats, so that they are refused
        # below with a message about the field rather than a generic parse error.
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, "the body is not valid JSON", [{"message": str(exc)}]) from None
    try:
        order = OrderIn.model_validate(data)
    except ValidationError as exc:
        raise BadRequest(422, "invalid order", field_errors(exc)) from None
    if "\x00" in order.product:
        # PostgreSQL text cannot hold NUL: refuse it here rather than fail at the INSERT.
        raise BadRequest(
            422,
            "invalid order",
            [{"field": "product", "message": "must not contain NUL characters", "type": "nul"}],
        )
    if Decimal(repr(order.price)).as_tuple().exponent < -2:  # type: ignore[operator]
        raise BadRequest(
            422,
            "invalid order",
            [{"field": "price", "message": "at most 2 decimal places", "type": "decimal_places"}],
        )
    return order
