"""The FastAPI application: POST /orders (202 + enqueue), the read endpoints, health, stats."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import psycopg
import redis.exceptions
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mqlab import db
from mqlab.api.backends import PG_ERRORS, REDIS_ERRORS, Backends, pg_failure, unavailable
from mqlab.api.fastpath import OrdersAPI, fast_post_orders
from mqlab.api.validation import (
    OrderIn,
    error_response,
)
from mqlab.observe import snapshot
from mqlab.settings import Settings

log = logging.getLogger("mqlab.api")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


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

    @app.exception_handler(psycopg.Error)  # also psycopg_pool.PoolTimeout, a subclass
    async def _pg_down(_: Request, exc: Exception) -> JSONResponse:
        return pg_failure(exc)

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_down(_: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        return unavailable("Redis", exc)

    @app.post(
        "/orders",
        status_code=202,
        summary="Accept an order: store it with its job, enqueue the job, answer 202 at once",
        openapi_extra=_ORDER_BODY_SCHEMA,
    )
    async def create_order() -> Response:
        """Never called: OrdersAPI answers POST /orders before routing (see fastpath.py).

        Registered so that OpenAPI and /docs describe the endpoint.
        """
        raise RuntimeError("POST /orders is answered by OrdersAPI's fast path")

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
