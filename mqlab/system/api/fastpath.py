"""POST /orders as a bare ASGI handler, in front of FastAPI (the one hot path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import psycopg
from fastapi import FastAPI
from fastapi.responses import Response
from starlette.types import Message, Receive, Scope, Send

from mqlab.system.api.backends import Backends, internal_error, pg_failure, redis_failure
from mqlab.system.api.validation import (
    MAX_BODY_BYTES,
    BadRequest,
    check_content_encoding,
    check_content_type,
    check_length,
    error_response,
    parse_order,
)
from mqlab.system.api.writer import RedisDown, accepted_body


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _header_list(scope: Scope, name: bytes) -> str | None:
    """A list-valued header (Content-Encoding), which may come in several lines: all of them."""
    values = [value.decode("latin-1") for key, value in scope["headers"] if key == name]
    return ", ".join(values) if values else None


async def _receive_body(receive: Receive, content_length: str | None) -> bytes:
    """The ASGI request body, refused with 413 as soon as it passes the limit."""
    check_length(content_length)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large", [{"maxBytes": MAX_BODY_BYTES}])
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_accepted(send: Send, order_id: int, job_id: str) -> None:
    body = accepted_body(order_id, job_id)
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                (b"location", b"/orders/%d" % order_id),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def fast_post_orders(backends: Backends) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """POST /orders as a bare ASGI handler: the same contract as the FastAPI route.

    Why: FastAPI's routing, dependency solving, middleware stack and Request/Response
    objects cost about a third of the API's CPU per order, and this is the one hot path.
    """

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        response: Response
        try:
            check_content_type(_header(scope, b"content-type"))
            check_content_encoding(_header_list(scope, b"content-encoding"))
            body = await _receive_body(receive, _header(scope, b"content-length"))
            order_id, job_id = await backends.writer.submit(parse_order(body))
        except ClientGone:
            return
        except BadRequest as exc:
            response = error_response(exc.status, exc.error, exc.details)
        except RedisDown as exc:
            # Away or full: 503; any other error reply (the queue key holds no list): 500.
            response = redis_failure("POST /orders", exc.__cause__ or exc)
        except psycopg.Error as exc:  # PoolTimeout included (a psycopg.OperationalError)
            response = pg_failure("POST /orders", exc)
        except Exception as exc:
            response = internal_error("POST /orders", exc)
        else:
            await _send_accepted(send, order_id, job_id)
            return
        await response(scope, receive, send)

    return handle


class OrdersAPI(FastAPI):
    """FastAPI, with POST /orders answered by the lean handler before the framework's stack,
    HEAD answered for every GET route, and every unexpected exception answered with a JSON 500
    and logged once.

    The FastAPI route for POST /orders stays registered only so that OpenAPI documents it.
    """

    fast_orders: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: a failed start must reach the server
            await super().__call__(scope, receive, send)
            return
        if scope["method"] == "HEAD":
            await self._head(scope, receive, send)
            return
        fast = self.fast_orders
        if fast is not None and scope["path"] == "/orders" and scope["method"] == "POST":
            try:
                await fast(scope, receive, send)
            except Exception as exc:  # handle() answers every other failure itself
                internal_error("POST /orders (sending the answer)", exc)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await super().__call__(scope, receive, tracking_send)
        except Exception as exc:
            # Starlette has answered with the app's Exception handler (a JSON 500) and raised
            # again so that the server may log it. It is logged here, with the request, and
            # not raised further: uvicorn would log the same traceback a second time.
            response = internal_error(f"{scope['method']} {scope['path']}", exc)
            if not started:
                await response(scope, receive, send)

    async def _head(self, scope: Scope, receive: Receive, send: Send) -> None:
        """HEAD as GET without the body (its status and headers, Content-Length included).

        Why here: FastAPI's routes, unlike Starlette's, do not answer HEAD for GET (405), and
        adding HEAD to each route would put it in the OpenAPI document as a second operation.
        """

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self({**scope, "method": "GET"}, receive, headers_only)

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, without its default 422 (pydantic's error shape, not ours).

        Every route that can answer 422 declares its own; FastAPI adds its default to every
        route with a parameter, so the ones left are on routes that never answer 422.
        """
        if self.openapi_schema is None:
            spec = super().openapi()
            for operations in spec.get("paths", {}).values():
                for operation in operations.values():
                    answer = operation.get("responses", {}).get("422", {})
                    if "HTTPValidationError" in orjson.dumps(answer).decode():
                        del operation["responses"]["422"]
            for name in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(name, None)
            self.openapi_schema = spec
        return self.openapi_schema
