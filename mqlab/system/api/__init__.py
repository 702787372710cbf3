"""The HTTP API (producer): accepts orders with 202 and enqueues their jobs."""

from __future__ import annotations

from mqlab.system.api.app import create_app

__all__ = ["create_app"]
