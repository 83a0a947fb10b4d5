"""The handlers' JSON log lines, one readable line each, for the offline invoke.

The handler logs through Powertools as in Lambda; this view swaps its stdout
handler for one that prints each record's fields as a sentence, and keeps the
EMF metric lines (printed to stdout) out of the way.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

from aws_lambda_powertools import Logger

# Fields Powertools adds to every line; they say nothing about the decision.
_ENVELOPE = {
    "level",
    "location",
    "message",
    "timestamp",
    "service",
    "cold_start",
    "function_name",
    "function_memory_size",
    "function_arn",
    "function_request_id",
    "sampling_rate",
    "xray_trace_id",
}


def render(line: dict[str, Any], now: datetime) -> str:
    """One log line as text: the scaler's decision and the reaper's outcomes in words, others as key=value."""
    clock = now.strftime("%H:%M:%S")
    if line["message"] == "scaling decision":
        return f"{clock} {_decision(line)}"
    if "instance_id" in line and "reason" in line:
        return f"{clock} {line['level']:<7} {line['message']}: {_reaped(line)}"
    extra = " ".join(f"{key}={_short(value)}" for key, value in line.items() if key not in _ENVELOPE)
    return f"{clock} {line['level']:<7} {line['message']}" + (f"  {extra}" if extra else "")


def _decision(line: dict[str, Any]) -> str:
    jobs, plan = line["metrics"], line["plan"]
    text = (
        f"{line['queue']}: jobs {jobs['scheduled']} scheduled, {jobs['running']} running, {jobs['waiting']} waiting; "
        f"agents {jobs['total']} connected; instances {plan['live']} live "
        f"({plan['booting']} booting, {plan['ready']} ready, {plan['stuck']} stuck); "
        f"needs {plan['needed_agents']} agents, expects {plan['expected_agents']} "
        f"-> launch {plan['launch_floor']} floor + {plan['launch_burst']} burst"
    )
    if plan["unmet_instances"]:
        text += f", {plan['unmet_instances']} unmet"
    text += f" ({plan['reason']})"
    if line.get("held"):
        text += f" [held: queue {line['held']} in Buildkite]"
    if line["dry_run"]:
        text += " [dry run]"
    if line.get("unmatched_jobs"):
        text += f"\n         jobs no queue can serve: {', '.join(line['unmatched_jobs'])}"
    if line["launched"]:
        text += f"\n         launched {', '.join(line['launched'])}"
    for failure in line["failures"]:
        text += f"\n         failed {_short(failure)}"
    return text


def _reaped(line: dict[str, Any]) -> str:
    text = f"{line['instance_id']} ({line['queue']}, {line['reason']}, launched {line['age_seconds'] // 60} min ago)"
    for key in ("deferred_because", "error", "console_error"):
        if line.get(key):
            text += f"; {key.replace('_', ' ')}: {line[key]}"
    tail = (line.get("console_tail") or "").strip().splitlines()
    if tail:
        text += f"\n         console tail ({len(tail)} lines), last: {tail[-1]}"
    return text


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:197] + "..."


class _ReadableHandler(logging.Handler):
    def __init__(self, logger: Logger, out: TextIO) -> None:
        super().__init__()
        self._formatter = logger.registered_formatter
        self._out = out

    def emit(self, record: logging.LogRecord) -> None:
        line = json.loads(self._formatter.format(record))
        print(render(line, datetime.now(UTC)), file=self._out)


@contextlib.contextmanager
def readable(logger: Logger, out: TextIO | None = None) -> Iterator[None]:
    """Within this block the logger prints readable lines to `out` (stdout) and the EMF lines are dropped."""
    out = out or sys.stdout
    std_logger = logging.getLogger(logger.name)
    handlers = list(std_logger.handlers)
    view = _ReadableHandler(logger, out)
    for handler in handlers:
        std_logger.removeHandler(handler)
    std_logger.addHandler(view)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        std_logger.removeHandler(view)
        for handler in handlers:
            std_logger.addHandler(handler)
