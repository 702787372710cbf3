"""Behind a pooler: mqlab's prepared statements can be switched off (MQLAB_PG_PREPARE=off), as
PgBouncer before 1.21 in transaction pooling cannot keep them (docs/production.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def test_prepared_statements_can_be_switched_off_for_a_pooler() -> None:
    """MQLAB_PG_PREPARE=off: nothing prepared (PgBouncer before 1.21 in transaction pooling
    cannot keep prepared statements: docs/production.md); anything else but on/off is said."""
    from mqlab.db import ENV_PREPARE, prepare_threshold

    assert prepare_threshold({}) == 0
    assert prepare_threshold({ENV_PREPARE: "off"}) is None
    assert prepare_threshold({ENV_PREPARE: "ON"}) == 0
    with pytest.raises(ValueError, match="must be on or off"):
        prepare_threshold({ENV_PREPARE: "sometimes"})


def test_worker_and_api_refuse_a_bad_mqlab_pg_prepare() -> None:
    for command in (["worker"], ["api", "--port", "1"]):
        done = subprocess.run(
            [sys.executable, "-m", "mqlab", *command],
            env={**os.environ, "MQLAB_PG_PREPARE": "maybe"},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1
        assert "MQLAB_PG_PREPARE must be on or off" in done.stdout + done.stderr
