"""mqlab: a terminal lab for the producer-consumer pattern (Kata 3: message queues + workers)."""

from __future__ import annotations

__version__ = "0.1.0"
