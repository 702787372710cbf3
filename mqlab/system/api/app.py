"""The FastAPI application: POST /orders (202 + enqueue), the read endpoints, health, stats."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import orjson
import psycopg
import redis.exceptions
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from mqlab import db
from mqlab.backend_errors import REDIS_FAILURE
from mqlab.protocol import keys
from mqlab.settings import Settings
from mqlab.system import dead_letters
from mqlab.system.api import schemas
from mqlab.system.api.backends import (
    RETRY_AFTER,
    Backends,
    log_down,
    pg_failure,
    redis_failure,
)
from mqlab.system.api.fastpath import OrdersAPI, fast_post_orders
from mqlab.system.api.validation import OrderIn, echo, error_response
from mqlab.system.observe import snapshot
from mqlab.system.reconciler_record import read_run

log = logging.getLogger("mqlab.system.api")

#: Set to 1 to add GET /_test/fail, which raises: the tests' way to prove, on a real running
#: API, what an unexpected exception gives (a JSON 500, logged once). Off unless set.
TEST_HOOKS_ENV = "MQLAB_API_TEST_HOOKS"

#: PostgreSQL's bigint: ids and offsets beyond it cannot be sent to the database.
BIGINT_MAX = 2**63 - 1


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers=headers, media_type="application/json")


_ORDER_BODY_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": OrderIn.model_json_schema()}},
    }
}

Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many, newest first")]
Offset = Annotated[int, Query(ge=0, le=BIGINT_MAX, description="skip this many")]
#: The integers a URL carries (path or query), and how they are written: decimal digits.
_URL_INTEGERS = {"limit", "offset", "order_id"}
_DECIMAL = re.compile(r"-?[0-9]+")


def _decimal_integers(request: Request) -> None:
    """An integer in the URL is written in decimal digits only. pydantic's lax int also reads
    "1.0", " 1", "+1" and "1_0", so /orders/1.0 answered order 1 where a 422 is due (found by
    schemathesis). Checked on the raw text before the parameters are read; a BeforeValidator
    on the type would do it too, but it turns the bounds in the OpenAPI document into
    pydantic's own `ge`/`le` keys, which no client reads."""
    errors = [
        {
            "type": "int_parsing",
            "loc": (where, name),
            "msg": "Input should be an integer in decimal digits",
            "input": value,
        }
        for where, params in (("path", request.path_params), ("query", request.query_params))
        for name, value in params.items()
        if name in _URL_INTEGERS and not _DECIMAL.fullmatch(value)
    ]
    if errors:
        raise RequestValidationError(errors)


StatusFilter = Annotated[schemas.JobStatus | None, Query(description="only jobs of this status")]


def _not_found(key: str, value: object) -> JSONResponse:
    return error_response(404, "not found", [{key: echo(value)}])


def _allowed(app: FastAPI, path: str) -> str:
    """Every method some route answers on this path, for a 405's Allow header."""
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")  # OrdersAPI answers HEAD for every GET route
    return ", ".join(sorted(methods))


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
        description=(
            'Errors are JSON `{"error": "...", "details": [...]}`. A refused request '
            "(4xx or 503) writes nothing: no row, no queue entry."
        ),
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(_decimal_integers)],
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
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only
            # (`Allow: POST` for /orders, which also answers GET).
            headers = {**(headers or {}), "Allow": _allowed(app, request.url.path)}
        return error_response(exc.status_code, error, [], headers=headers)

    @app.exception_handler(psycopg.Error)  # also psycopg_pool.PoolTimeout, a subclass
    async def _pg_down(request: Request, exc: Exception) -> JSONResponse:
        return pg_failure(f"{request.method} {request.url.path}", exc)

    @app.exception_handler(redis.exceptions.RedisError)
    async def _redis_down(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        return redis_failure(f"{request.method} {request.url.path}", exc)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        # The body only: Starlette raises the exception again after this answer, and
        # OrdersAPI.__call__ logs it there, once.
        return error_response(500, "internal error")

    # Answered by OrdersAPI's fast path (fastpath.py) before any routing: this route is
    # registered only so that OpenAPI and /docs describe POST /orders, and never runs.
    @app.post(
        "/orders",
        status_code=202,
        summary="Accept an order: store it with its job, enqueue the job, answer 202 at once",
        operation_id="create_order",
        response_model=None,
        responses=schemas.POST_ORDERS,
        openapi_extra=_ORDER_BODY_SCHEMA,
        description=(
            "The order and its job are committed in one transaction, then the job is pushed "
            f"on the queue `{keys.QUEUE}`; the answer does not wait for any work. Unknown "
            "fields, a key given twice, a blank product, a fractional quantity and a price "
            "with more than 2 decimals are refused (422)."
        ),
    )
    async def create_order() -> Response:
        raise RuntimeError("POST /orders is answered by OrdersAPI's fast path")

    @app.get(
        "/orders",
        summary="Orders, newest first",
        operation_id="list_orders",
        responses={200: {"model": list[schemas.Order]}, **schemas.INVALID, **schemas.COMMON},
    )
    async def list_orders(limit: Limit = 100, offset: Offset = 0) -> Response:
        async with backends.pool.connection() as conn:
            rows = await (await conn.execute(db.LIST_ORDERS, [limit, offset])).fetchall()
        return _json([db.order_json(r) for r in rows])

    @app.get(
        "/orders/{order_id}",
        summary="One order",
        operation_id="get_order",
        responses={
            200: {"model": schemas.Order},
            **schemas.NOT_FOUND,
            **schemas.INVALID,
            **schemas.COMMON,
        },
    )
    async def get_order(order_id: int) -> Response:
        """404 for any integer that is not an order's id (also those no bigint can hold)."""
        if not 1 <= order_id <= BIGINT_MAX:  # no such row can exist: do not ask PostgreSQL
            return _not_found("orderId", order_id)
        async with backends.pool.connection() as conn:
            cur = await conn.execute(db.ORDER_BY_ID, [order_id])
            row = await cur.fetchone()
        if row is None:
            return _not_found("orderId", order_id)
        return _json(db.order_json(row))

    @app.get(
        "/jobs",
        summary="Jobs, newest first; ?status=dead for the dead ones",
        operation_id="list_jobs",
        responses={200: {"model": list[schemas.Job]}, **schemas.INVALID, **schemas.COMMON},
    )
    async def list_jobs(
        limit: Limit = 100, offset: Offset = 0, status: StatusFilter = None
    ) -> Response:
        async with backends.pool.connection() as conn:
            if status is None:
                cur = await conn.execute(db.LIST_JOBS, [limit, offset])
            else:
                cur = await conn.execute(db.LIST_JOBS_BY_STATUS, [status, limit, offset])
            rows = await cur.fetchall()
        return _json([db.job_json(r) for r in rows])

    @app.get(
        "/jobs/{job_id}",
        summary="One job, with every attempt (history)",
        operation_id="get_job",
        responses={200: {"model": schemas.JobDetail}, **schemas.NOT_FOUND, **schemas.COMMON},
    )
    async def get_job(job_id: str) -> Response:
        """404 for any text that is not a job's id."""
        if "\x00" in job_id:  # PostgreSQL text cannot hold NUL, so no job has it
            return _not_found("jobId", job_id)
        async with backends.pool.connection() as conn:
            cur = await conn.execute(db.JOB_BY_ID, [job_id])
            row = await cur.fetchone()
            if row is None:
                return _not_found("jobId", job_id)
            history = await dead_letters.job_history(conn, job_id)
        return _json({**db.job_json(row), "history": history})

    @app.post(
        "/jobs/{job_id}/retry",
        status_code=202,
        summary="Queue a dead job again (its attempts counted afresh)",
        operation_id="retry_job",
        response_model=None,
        responses=schemas.RETRY_JOB,
        description=(
            "A dead job is pending again, its message back on the queue and its entries off "
            f"the dead letters (`{keys.DEAD}`); 409 when it is not dead (a second retry finds "
            "it pending: replaying twice queues once)."
        ),
    )
    async def retry_job(job_id: str) -> Response:
        if "\x00" in job_id:
            return _not_found("jobId", job_id)
        async with backends.pool.connection() as conn:
            (done,) = await dead_letters.replay(backends.redis, conn, [job_id])
        if done.outcome == "no such job":
            return _not_found("jobId", job_id)
        if done.outcome == "not dead":
            details = [{"jobId": echo(job_id), "status": done.status}]
            return error_response(409, f"the job is {done.status}, not dead", details)
        body = {"message": schemas.REPLAYED_MESSAGE, "jobId": job_id, "status": "pending"}
        return _json(body, 202)

    @app.get(
        "/health",
        summary="200 when Redis and PostgreSQL answer, 503 naming the one down",
        operation_id="health",
        responses={200: {"model": schemas.Health}, **schemas.HEALTH},
    )
    async def health() -> Response:
        down: list[dict[str, str]] = []
        reconciler = None
        try:
            await backends.redis.ping()
            reconciler = await read_run(backends.redis)
        except REDIS_FAILURE as exc:  # an error reply (NOAUTH, LOADING) is no health either
            log_down("Redis", exc)
            down.append({"backend": "Redis"})
        try:
            async with backends.pool.connection() as conn:
                await conn.execute(db.PING)
        except psycopg.Error as exc:  # PoolTimeout and a refused SELECT 1 included
            log_down("PostgreSQL", exc)
            down.append({"backend": "PostgreSQL"})
        if down:
            names = " and ".join(d["backend"] for d in down)
            return error_response(503, f"{names} unavailable", down, headers=RETRY_AFTER)
        last = None if reconciler is None else reconciler.to_json()
        return _json({"status": "ok", "redis": "up", "postgres": "up", "reconciler": last})

    @app.get(
        "/stats",
        summary="Queue depth, in-flight and dead messages, workers, counts",
        operation_id="stats",
        responses={200: {"model": schemas.Stats}, **schemas.COMMON},
    )
    async def stats() -> Response:
        async with backends.pool.connection() as conn:
            snap = await snapshot(backends.redis, conn)
        return _json(snap.to_json())

    if os.environ.get(TEST_HOOKS_ENV) == "1":

        @app.get("/_test/fail", include_in_schema=False)
        async def fail() -> Response:
            raise RuntimeError("provoked by GET /_test/fail (MQLAB_API_TEST_HOOKS=1)")

    return app
