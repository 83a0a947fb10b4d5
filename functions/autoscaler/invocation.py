"""What both handlers share: the scheduler's event and the clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Protocol


class EventError(ValueError):
    """The invocation's event is not what the scheduler sends."""


class Clock(Protocol):
    def now(self) -> datetime: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def dry_run_requested(event: Any) -> bool:
    """`"dry_run": true` in the event forces a dry run for this invocation."""
    if event is None:
        return False
    if not isinstance(event, dict):
        raise EventError(f"event must be a JSON object (got {type(event).__name__})")
    value = event.get("dry_run", False)
    if not isinstance(value, bool):
        raise EventError(f"event.dry_run must be true or false (got {value!r})")
    return value
