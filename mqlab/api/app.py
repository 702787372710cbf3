"""The FastAPI application: POST /orders (202 + enqueue), the read endpoints, health, stats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import psycopg
import psycopg_pool
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from mqlab import db, keys
from mqlab.api.validation import (
    MAX_BODY_BYTES,
    BadRequest,
    OrderIn,
    check_content_type,
    check_length,
    error_response,
    parse_order,
)
from mqlab.observe import snapshot
from mqlab.settings import Settings

log = logging.getLogger("mqlab.api")

ACCEPTED_MESSAGE = "Orden recibida y en proceso"
#: How long a request waits for a pooled connection before answering 503.
POOL_TIMEOUT = 2.0

REDIS_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
PG_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.InterfaceError)


class Backends:
    """The connections one API process holds: a PostgreSQL pool and a Redis client."""

    def __init__(self, settings: Settings, pool_size: int) -> None:
        self.pool = psycopg_pool.AsyncConnectionPool(
            settings.database_url,
            min_size=min(4, pool_size),
            max_size=pool_size,
            # Prepared on first use: the pool hands out its connections in turn, so with the
            # default threshold (5 runs per connection) a lab's few orders were never prepared
            # and each paid for planning the statement (single-order p50 3.2 -> 2.8 ms).
            kwargs={"autocommit": True, "prepare_threshold": 0},
            timeout=POOL_TIMEOUT,
            open=False,
        )
        self.redis = aioredis.Redis.from_url(
            settings.redis_url,
            decode_responses=True,
            socket_timeout=2,
            socket_connect_timeout=1,
            max_connections=pool_size * 2,
        )
        self.writer = OrderWriter(self)

    async def open(self) -> None:
        # wait=False: the API starts (and answers 503) even while PostgreSQL is away.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()
        await self.redis.aclose()


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


def _unavailable(backend: str, exc: BaseException) -> JSONResponse:
    return error_response(
        503,
        f"{backend} is unavailable",
        [{"backend": backend, "message": str(exc) or type(exc).__name__}],
        headers={"Retry-After": "1"},
    )


async def _read_body(request: Request) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (also when chunked)."""
    check_length(request.headers.get("content-length"))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(413, "request body too large", [{"maxBytes": MAX_BODY_BYTES}])
        chunks.append(chunk)
    return b"".join(chunks)


class RedisDown(Exception):
    """The job could not be enqueued (its rows were taken back); __cause__ says why."""


Accepted = tuple[int, str]  # (orderId, jobId)


class OrderWriter:
    """Writes accepted orders in groups: one INSERT (one commit) and one LPUSH per group.

    Why: on this kind of machine a round trip to PostgreSQL or Redis costs far more CPU
    (system calls, wake-ups) than the statement itself. An order that arrives while a group
    is being written waits for the next group; with one client a group is one order and
    nothing waits. Each order is still stored with its job in one transaction before its
    job is enqueued, and a group whose LPUSH fails is deleted again, so the contract holds.
    """

    #: Orders per group at most.
    MAX_GROUP = 100
    #: Groups written at once: a second one overlaps the first one's commit (its fsync).
    MAX_WRITERS = 2

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.pending: list[tuple[OrderIn, asyncio.Future[Accepted]]] = []
        self.writers = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, order: OrderIn) -> Accepted:
        """(orderId, jobId) once the order is committed and its job enqueued."""
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        self.pending.append((order, future))
        self._maybe_start()
        return await future

    def _maybe_start(self) -> None:
        if self.pending and self.writers < self.MAX_WRITERS:
            self.writers += 1
            # A task of its own, so that a cancelled request never strands the others.
            task = asyncio.get_running_loop().create_task(self._write_next())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _write_next(self) -> None:
        group = self.pending[: self.MAX_GROUP]
        del self.pending[: self.MAX_GROUP]
        try:
            await self._write(group)
        except Exception as exc:
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
        finally:
            # Cancelled (shutdown): whoever still waits must not wait forever.
            for _, future in group:
                future.cancel()
            self.writers -= 1
            self._maybe_start()

    async def _write(self, group: list[tuple[OrderIn, asyncio.Future[Accepted]]]) -> None:
        orders = [order for order, _ in group]
        try:
            rows = await self._insert(orders)
        except (psycopg.DataError, psycopg.IntegrityError):
            if len(group) == 1:
                raise
            # One order PostgreSQL refuses must not sink the others: write them one by one.
            for item in group:
                try:
                    await self._write([item])
                except Exception as exc:
                    if not item[1].done():
                        item[1].set_exception(exc)
            return
        # Commit first, then enqueue: a worker must never pop a job whose row is not there yet.
        messages = [
            orjson.dumps({"jobId": job_id, "orderId": order_id, "enqueuedAt": at})
            for order_id, job_id, at in rows
        ]
        try:
            # One LPUSH of many values pushes them in order: FIFO is kept within the group.
            await self.backends.redis.lpush(keys.QUEUE, *messages)
        except (*REDIS_ERRORS, redis.exceptions.RedisError) as exc:
            # Not enqueued, so not accepted: take the rows back so that nothing is left behind.
            async with self.backends.pool.connection() as conn:
                await conn.execute(db.DELETE_ORDERS, [[order_id for order_id, _, _ in rows]])
            raise RedisDown(str(exc)) from exc
        for (_, future), (order_id, job_id, _) in zip(group, rows, strict=True):
            if not future.done():
                future.set_result((order_id, job_id))

    async def _insert(self, orders: list[OrderIn]) -> list[tuple[int, str, str]]:
        """The rows (orderId, jobId, enqueuedAt as ISO text) of the orders, in their order."""
        params = {
            "products": [o.product for o in orders],
            "quantities": [o.quantity for o in orders],
            "prices": [o.price for o in orders],
            "ms": int(time.time() * 1000),
        }
        async with self.backends.pool.connection() as conn:
            cur = await conn.execute(db.INSERT_ORDERS, params)
            found = await cur.fetchall()
        by_position = {n: (order_id, job_id, at) for n, order_id, job_id, at in found}
        return [by_position[n] for n in range(1, len(orders) + 1)]


async def accept_order(backends: Backends, order: OrderIn) -> Accepted:
    """Store the order and its job, then enqueue the job: (orderId, jobId).

    Raises RedisDown when the LPUSH failed (the rows are deleted again), psycopg errors or
    PoolTimeout when PostgreSQL is away.
    """
    return await backends.writer.submit(order)


def accepted_body(order_id: int, job_id: str) -> bytes:
    return orjson.dumps(
        {"message": ACCEPTED_MESSAGE, "orderId": order_id, "jobId": job_id, "status": "pending"}
    )


def _pg_failure(exc: BaseException) -> Response:
    """503 when PostgreSQL is away (or the pool has no connection for us), else 500."""
    if isinstance(exc, (*PG_ERRORS, psycopg_pool.PoolTimeout)):
        return _unavailable("PostgreSQL", exc)
    log.error("database error: %s", exc)
    return error_response(500, "database error", [{"message": str(exc)}])


class ClientGone(Exception):
    """The client disconnected before its request body arrived."""


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


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
            body = await _receive_body(receive, _header(scope, b"content-length"))
            order_id, job_id = await accept_order(backends, parse_order(body))
        except ClientGone:
            return
        except BadRequest as exc:
            response = error_response(exc.status, exc.error, exc.details)
        except RedisDown as exc:
            response = _unavailable("Redis", exc.__cause__ or exc)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            response = _pg_failure(exc)
        except Exception:
            log.exception("POST /orders failed")
            response = error_response(500, "internal error")
        else:
            await _send_accepted(send, order_id, job_id)
            return
        await response(scope, receive, send)

    return handle


class OrdersAPI(FastAPI):
    """FastAPI, with POST /orders answered by a lean handler before the framework's stack.

    The FastAPI route for POST /orders stays registered: it documents the endpoint in
    OpenAPI and serves it if the app is mounted where the fast path does not match.
    """

    fast_orders: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.fast_orders is not None
            and scope["type"] == "http"
            and scope["path"] == "/orders"
            and scope["method"] == "POST"
            and not scope.get("root_path")
        ):
            await self.fast_orders(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


_ORDER_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": OrderIn.model_json_schema()}},
    }
}

Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")]
Offset = Annotated[int, Query(ge=0, description="skip this many")]


def create_app(settings: Settings, pool_size: int = 20) -> OrdersAPI:
    """The API bound to one pair of backends."""
    backends = Backends(settings, pool_size)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backends.open()
        try:
            yield
        finally:
            await backends.close()

    app = OrdersAPI(
        title="mqlab API",
        summary="Producer of the Kata 3 lab: accepts orders with 202 and enqueues their jobs.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.fast_orders = fast_post_orders(backends)

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.details)

    @app.exception_handler(RequestValidationError)
    async def _bad_params(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        return error_response(422, "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, error, [], headers=exc.headers)

    @app.exception_handler(psycopg.Error)
    async def _pg_down(_: Request, exc: psycopg.Error) -> JSONResponse:
        if isinstance(exc, PG_ERRORS):
            return _unavailable("PostgreSQL", exc)
        log.exception("database error")
        return error_response(500, "database error", [{"message": str(exc)}])

    @app.exception_handler(psycopg_pool.PoolTimeout)
    async def _pool_timeout(_: Request, exc: psycopg_pool.PoolTimeout) -> JSONResponse:
        return _unavailable("PostgreSQL", exc)

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_down(_: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        return _unavailable("Redis", exc)

    @app.post(
        "/orders",
        status_code=202,
        summary="Accept an order: store it with its job, enqueue the job, answer 202 at once",
        openapi_extra=_ORDER_BODY_SCHEMA,
    )
    async def create_order(request: Request) -> Response:
        check_content_type(request.headers.get("content-type"))
        order = parse_order(await _read_body(request))
        try:
            order_id, job_id = await accept_order(backends, order)
        except RedisDown as exc:
            return _unavailable("Redis", exc.__cause__ or exc)
        return Response(
            accepted_body(order_id, job_id),
            202,
            headers={"Location": f"/orders/{order_id}"},
            media_type="application/json",
        )

    @app.get("/orders", summary="Orders, newest first")
    async def list_orders(limit: Limit = 100, offset: Offset = 0) -> Response:
        sql = f"{db.SELECT_ORDERS} ORDER BY o.id DESC LIMIT %s OFFSET %s"
        async with backends.pool.connection() as conn:
            rows = await (await conn.execute(sql, [limit, offset])).fetchall()
        return _json([db.order_json(r) for r in rows])

    @app.get("/orders/{order_id}", summary="One order")
    async def get_order(order_id: int) -> Response:
        async with backends.pool.connection() as conn:
            cur = await conn.execute(f"{db.SELECT_ORDERS} WHERE o.id = %s", [order_id])
            row = await cur.fetchone()
        if row is None:
            return error_response(404, "not found", [{"orderId": order_id}])
        return _json(db.order_json(row))

    @app.get("/jobs", summary="Jobs, newest first")
    async def list_jobs(limit: Limit = 100, offset: Offset = 0) -> Response:
        sql = f"{db.SELECT_JOBS} ORDER BY enqueued_at DESC, id DESC LIMIT %s OFFSET %s"
        async with backends.pool.connection() as conn:
            rows = await (await conn.execute(sql, [limit, offset])).fetchall()
        return _json([db.job_json(r) for r in rows])

    @app.get("/jobs/{job_id}", summary="One job")
    async def get_job(job_id: str) -> Response:
        async with backends.pool.connection() as conn:
            cur = await conn.execute(f"{db.SELECT_JOBS} WHERE id = %s", [job_id])
            row = await cur.fetchone()
        if row is None:
            return error_response(404, "not found", [{"jobId": job_id}])
        return _json(db.job_json(row))

    @app.get("/health", summary="200 when Redis and PostgreSQL answer, 503 naming the one down")
    async def health() -> Response:
        down: list[dict[str, str]] = []
        try:
            await backends.redis.ping()
        except (*REDIS_ERRORS, redis.exceptions.RedisError) as exc:
            down.append({"backend": "Redis", "message": str(exc) or type(exc).__name__})
        try:
            async with backends.pool.connection() as conn:
                await conn.execute("SELECT 1")
        except (*PG_ERRORS, psycopg.Error) as exc:
            down.append({"backend": "PostgreSQL", "message": str(exc) or type(exc).__name__})
        if down:
            names = " and ".join(d["backend"] for d in down)
            return error_response(503, f"{names} unavailable", down)
        return _json({"status": "ok", "redis": "up", "postgres": "up"})

    @app.get("/stats", summary="Queue depth, in-flight and dead messages, workers, counts")
    async def stats() -> Response:
        async with backends.pool.connection() as conn:
            snap = await snapshot(backends.redis, conn)
        return _json(snap.to_json())

    return app
