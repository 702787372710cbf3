"""The API's answers as OpenAPI describes them: a model for each body, and each route's statuses.

These models document; they do not serialize (the routes write their JSON with orjson). That
they tell the truth is tested: schemathesis validates every answer of a running API against
them (tests/test_openapi.py), and they forbid fields they do not name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from mqlab import db
from mqlab.system.api.writer import ACCEPTED_MESSAGE

#: POST /jobs/{id}/retry's message, beside the kata's "Orden recibida y en proceso".
REPLAYED_MESSAGE = "Trabajo reencolado"

# The statuses as PostgreSQL's CHECKs and db.ORDER_STATUSES / JOB_STATUSES have them.
OrderStatus = Literal[db.ORDER_STATUSES]  # type: ignore[valid-type]
JobStatus = Literal[db.JOB_STATUSES]  # type: ignore[valid-type]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Accepted(_Body):
    """The order is stored with its job, and the job is on the queue."""

    message: Literal[ACCEPTED_MESSAGE]  # type: ignore[valid-type]
    orderId: int
    jobId: str
    status: Literal["pending"]


class Order(_Body):
    id: int
    orderId: int = Field(description="the same as id")
    product: str
    quantity: int
    price: float
    status: OrderStatus
    jobId: str | None = Field(description="its latest job")
    createdAt: AwareDatetime
    updatedAt: AwareDatetime
    completedAt: AwareDatetime | None


class Job(_Body):
    id: str
    jobId: str = Field(description="the same as id")
    orderId: int
    status: JobStatus
    workerId: str | None = Field(description="the worker that took it last")
    attempts: int = Field(ge=0, description="claims so far (every attempt, replays included)")
    lastError: str | None
    enqueuedAt: AwareDatetime
    startedAt: AwareDatetime | None
    finishedAt: AwareDatetime | None
    nextAttemptAt: AwareDatetime | None = Field(description="when a retrying job is due")


class Attempt(_Body):
    """One claim of a job and how it ended (a row of job_attempts)."""

    attempt: int = Field(ge=1, description="1 for the first claim; replays keep counting")
    workerId: str
    startedAt: AwareDatetime
    finishedAt: AwareDatetime | None = Field(description="None while it runs")
    outcome: Literal[db.HISTORY_OUTCOMES]  # type: ignore[valid-type]
    error: str | None
    nextAttemptAt: AwareDatetime | None = Field(description="when the retry it led to is due")


class JobDetail(Job):
    history: list[Attempt] = Field(description="every attempt, in order")


class Replayed(_Body):
    """The dead job is pending again and its message is back on the queue."""

    message: Literal[REPLAYED_MESSAGE]  # type: ignore[valid-type]
    jobId: str
    status: Literal["pending"]


class JobState(_Body):
    jobId: str
    status: JobStatus


class NotDead(_Body):
    error: str = Field(description="says the job's status")
    details: list[JobState]


class ReconcilerRun(_Body):
    """The reconciler's last run (mqlab.system.reconciler_record)."""

    lastRun: AwareDatetime
    by: str = Field(description="the worker that ran it, or `cli` (`mqlab reconcile`)")
    took: float = Field(description="seconds")
    checked: int = Field(
        ge=0,
        description="jobs PostgreSQL expected to run (pending, retrying, processing) "
        "for longer than the grace",
    )
    found: int = Field(ge=0, description="of those, held by no Redis structure or live worker")
    requeued: int = Field(ge=0, description="of those, queued again")
    requeuedJobs: list[str] = Field(description="the first requeued job ids (up to 10)")
    lastRequeueAt: AwareDatetime | None = Field(
        description="the last run that requeued anything (null: none ever did)"
    )


class Health(_Body):
    status: Literal["ok"]
    redis: Literal["up"]
    postgres: Literal["up"]
    reconciler: ReconcilerRun | None = Field(
        description="the reconciler's last run, by any worker or the CLI (null: it never ran)"
    )


class Worker(_Body):
    id: str
    pid: int
    host: str
    state: str = Field(description="idle, busy or stopping")
    currentJob: str | None
    jobStarted: str | None = Field(description="ISO-8601 UTC")
    jobsDone: int
    started: str = Field(description="ISO-8601 UTC")
    lastBeat: str = Field(description="ISO-8601 UTC")
    inFlight: int = Field(description="messages in its processing list")


class Host(_Body):
    host: str = Field(
        description="the workers' host (MQLAB_HOST, else the machine's name); `(gone)`: the "
        "jobs of workers no longer live whose id names no live host"
    )
    workers: int = Field(ge=0, description="its live workers (0 for `(gone)`)")
    busy: int = Field(ge=0, description="of those, busy with a job")
    jobsDone: int = Field(ge=0, description="the sum of its live workers' jobs done")
    perSecond: float = Field(
        ge=0,
        description="jobs its workers completed per second over the last 10 s, by "
        "PostgreSQL's clock (jobs.finished_at); a worker no longer live counts under the "
        "live host its id starts with (`hosta-w3`, `hosta-1234`), else under `(gone)`",
    )


class Stats(_Body):
    takenAt: str = Field(description="ISO-8601 UTC")
    queueDepth: int
    processing: int = Field(description="messages in the workers' processing lists")
    dead: int = Field(description="messages on the dead-letter list")
    delayed: int = Field(description="retries waiting out their backoff (orders:delayed)")
    nextRetryAt: str | None = Field(
        description="ISO-8601 UTC (Redis's clock) the next delayed retry is due; null: none"
    )
    workers: list[Worker] = Field(description="live workers (their heartbeat has not expired)")
    hosts: list[Host] = Field(
        description="each host of a live worker, by name, then `(gone)` when it completed any"
    )
    orders: dict[OrderStatus, int]
    jobs: dict[JobStatus, int]


class Error(_Body):
    error: str = Field(description="what went wrong, for a person")
    details: list[dict[str, Any]]


class FieldError(_Body):
    field: str = Field(description="the field or parameter, or `body` for the whole body")
    message: str
    type: str = Field(description="a stable code, e.g. missing, int_type, repeated_key")


class InvalidRequest(_Body):
    error: str
    details: list[FieldError]


class BackendDown(_Body):
    backend: Literal["Redis", "PostgreSQL"]


class Unavailable(_Body):
    error: str = Field(description="names the backend, e.g. `Redis is unavailable`")
    details: list[BackendDown]


Responses = dict[int | str, dict[str, Any]]

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}

#: What any route may answer: its backends away, or a failure of our own.
COMMON: Responses = {
    500: {"model": Error, "description": "an unexpected failure (logged by the API)"},
    503: {
        "model": Unavailable,
        "description": "Redis or PostgreSQL is away; nothing was written",
        "headers": _RETRY_AFTER,
    },
}
INVALID: Responses = {422: {"model": InvalidRequest, "description": "an invalid parameter"}}
NOT_FOUND: Responses = {404: {"model": Error, "description": "no such id"}}

POST_ORDERS: Responses = {
    202: {
        "model": Accepted,
        "description": "accepted: stored with its job, and the job enqueued",
        "headers": {"Location": {"description": "/orders/{orderId}", "schema": {"type": "string"}}},
        "links": {
            "GetOrder": {
                "operationId": "get_order",
                "parameters": {"order_id": "$response.body#/orderId"},
            },
            "GetJob": {
                "operationId": "get_job",
                "parameters": {"job_id": "$response.body#/jobId"},
            },
        },
    },
    400: {"model": Error, "description": "the body is empty or not JSON (UTF-8)"},
    413: {"model": Error, "description": "the body is over 64 KiB"},
    415: {
        "model": Error,
        "description": "the content type is not JSON, or the body has a content encoding "
        "(gzip, br...): the API decodes none",
    },
    422: {
        "model": InvalidRequest,
        "description": "not a valid order (one detail per field); nothing was written",
    },
    **COMMON,
}
RETRY_JOB: Responses = {
    202: {"model": Replayed, "description": "the job was dead and is queued again"},
    404: NOT_FOUND[404],
    409: {"model": NotDead, "description": "the job is not dead: nothing was done"},
    **COMMON,
}
HEALTH: Responses = {
    500: COMMON[500],
    503: {
        "model": Unavailable,
        "description": "one or both backends do not answer",
        "headers": _RETRY_AFTER,
    },
}
