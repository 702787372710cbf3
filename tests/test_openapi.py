"""The OpenAPI document tells the truth: schemathesis, with every check, against a running API.

Positive cases (valid by the document) must be accepted, negative ones refused with a 4xx;
every answer's status, content type, headers and body must be the ones the document gives.
A refused POST /orders must leave nothing behind, and an accepted one exactly one order, one
job and one queue entry.
"""

from __future__ import annotations

import httpx
import psycopg
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import counts

#: Examples per operation: enough to find what the CLI run of the issue found, in seconds.
EXAMPLES = 60


@pytest.fixture
def api_schema(api_url: str) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    # `clean` runs once per operation, not per example: the examples share its database,
    # and each POST below is judged by what it changed.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_every_answer_is_documented(case: Case, pg: psycopg.Connection, rds: redis.Redis) -> None:
    """Slow by design (about 10 s in all): EXAMPLES generated requests per operation, each a real
    round trip to the API."""
    if case.method.upper() != "POST":
        case.call_and_validate()
        return
    before = counts(pg, rds)
    response = case.call_and_validate()
    grew = 1 if response.status_code == 202 else 0
    assert counts(pg, rds) == {k: v + grew for k, v in before.items()}, response.text


@pytest.mark.slow
def test_stateful_sequences(api_schema: OpenApiSchema) -> None:
    """Orders posted, then read back through the document's links (order, then job).

    Slow by design: EXAMPLES sequences of up to 5 real requests.
    """
    machine = api_schema.as_state_machine()
    machine.run(
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=5,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


def test_the_document_names_every_answer(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    statuses = {
        f"{method.upper()} {path}": sorted(op["responses"])
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    }
    assert statuses == {
        "POST /orders": ["202", "400", "413", "415", "422", "500", "503"],
        "GET /orders": ["200", "422", "500", "503"],
        "GET /orders/{order_id}": ["200", "404", "422", "500", "503"],
        "GET /jobs": ["200", "422", "500", "503"],
        "GET /jobs/{job_id}": ["200", "404", "500", "503"],
        "POST /jobs/{job_id}/retry": ["202", "404", "409", "500", "503"],
        "GET /health": ["200", "500", "503"],
        "GET /stats": ["200", "500", "503"],
    }
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                schema_ = answer["content"]["application/json"]["schema"]
                assert schema_, f"{method} {path} {status}: empty schema"
            assert "Never" not in op.get("description", ""), "an internal note in the document"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    order = spec["paths"]["/orders"]["post"]["requestBody"]["content"]["application/json"]
    rules = order["schema"]
    assert rules["additionalProperties"] is False
    assert rules["properties"]["price"]["multipleOf"] == 0.01
    assert (
        rules["properties"]["quantity"] | {"minimum": 1, "maximum": 1_000_000}
        == (rules["properties"]["quantity"])
    )
    assert {"minLength", "maxLength", "pattern"} <= set(rules["properties"]["product"])
