"""Embedded Redis and PostgreSQL: real servers from pip packages, state under MQLAB_HOME."""

from __future__ import annotations

from mqlab.lab.services.manager import ServiceInfo, ServicesError, down, status, up

__all__ = ["ServiceInfo", "ServicesError", "down", "status", "up"]
