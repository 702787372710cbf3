"""The FastAPI application: POST /orders (202 + enqueue), the read endpoints, health, stats."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
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
            kwargs={"autocommit": True},
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


_ORDER_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": OrderIn.model_json_schema()}},
    }
}

Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")]
Offset = Annotated[int, Query(ge=0, description="skip this many")]


def create_app(settings: Settings, pool_size: int = 20) -> FastAPI:
    """The API bound to one pair of backends."""
    backends = Backends(settings, pool_size)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await backends.open()
        try:
            yield
        finally:
            await backends.close()

    app = FastAPI(
        title="mqlab API",
        summary="Producer of the Kata 3 lab: accepts orders with 202 and enqueues their jobs.",
        version="0.1.0",
        lifespan=lifespan,
    )

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
        params = {
            "product": order.product,
            "quantity": order.quantity,
            "price": order.price,
            "ms": int(time.time() * 1000),
        }
        # Commit first, then enqueue: a worker must never pop a job whose row is not there yet.
        async with backends.pool.connection() as conn:
            cur = await conn.execute(db.INSERT_ORDER, params)
            row = await cur.fetchone()
        assert row is not None
        order_id, job_id, enqueued_at = row
        message = orjson.dumps(
            {"jobId": job_id, "orderId": order_id, "enqueuedAt": db.iso(enqueued_at)}
        )
        try:
            await backends.redis.lpush(keys.QUEUE, message)
        except REDIS_ERRORS as exc:
            # Not enqueued, so not accepted: take the rows back so that nothing is left behind.
            async with backends.pool.connection() as conn:
                await conn.execute(db.DELETE_ORDER, [order_id])
            return _unavailable("Redis", exc)
        return _json(
            {
                "message": ACCEPTED_MESSAGE,
                "orderId": order_id,
                "jobId": job_id,
                "status": "pending",
            },
            202,
            headers={"Location": f"/orders/{order_id}"},
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
