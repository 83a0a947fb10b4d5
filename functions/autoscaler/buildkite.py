"""Buildkite Agent Metrics API client: one GET per poll, every queue at once.

Every way the call can go wrong is its own exception type, so the scaler
can log and count it and then do nothing for that poll. The agent token is
held in a `Secret` so it never reaches a log line, a message or a repr.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests

from autoscaler.planner import QueueMetrics

DEFAULT_POLL_SECONDS = 10.0
POLL_HEADER = "Buildkite-Agent-Metrics-Poll-Duration"
# The header is the server's wish; bound it so a bad value can neither
# hammer the API nor stall scaling for minutes.
MIN_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 60.0
CONNECT_TIMEOUT = 3.05
READ_TIMEOUT = 5.0

_JOB_FIELDS = ("scheduled", "running", "waiting")
_AGENT_FIELDS = ("idle", "busy", "total")


class Secret:
    """A string that prints as asterisks."""

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


class MetricsError(Exception):
    """The metrics call failed; the poll must take no action."""

    kind = "error"


class MetricsAuthError(MetricsError):
    kind = "auth"


class MetricsRateLimited(MetricsError):
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MetricsServerError(MetricsError):
    kind = "server"


class MetricsTimeout(MetricsError):
    kind = "timeout"


class MetricsMalformed(MetricsError):
    kind = "malformed"


@dataclass(frozen=True)
class MetricsSnapshot:
    queues: Mapping[str, QueueMetrics] = field(default_factory=dict)
    poll_seconds: float = DEFAULT_POLL_SECONDS

    def for_queue(self, name: str) -> QueueMetrics:
        # A queue absent from the response has no jobs and no agents.
        return self.queues.get(name, QueueMetrics())


class MetricsClient:
    """Reads `GET {endpoint}/metrics` with the agent token."""

    def __init__(
        self,
        endpoint: str,
        token: Callable[[], Secret],
        session: requests.Session | None = None,
    ) -> None:
        self._url = endpoint.rstrip("/") + "/metrics"
        self._token = token
        self._session = session or requests.Session()

    def fetch(self, queues: Iterable[str]) -> MetricsSnapshot:
        try:
            response = self._session.get(
                self._url,
                headers={"Authorization": f"Token {self._token().reveal()}", "Accept": "application/json"},
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                allow_redirects=False,
            )
        except requests.Timeout:
            raise MetricsTimeout(f"no answer from {self._url} within {READ_TIMEOUT:g} s") from None
        except requests.RequestException as error:
            # The exception text may quote the request; keep only its type.
            raise MetricsServerError(f"request to {self._url} failed: {type(error).__name__}") from None
        _raise_for_status(response)
        try:
            body = response.json()
        except ValueError:
            raise MetricsMalformed(f"body is not JSON (starts {response.text[:40]!r})") from None
        return MetricsSnapshot(
            queues=parse_queues(body, queues),
            poll_seconds=parse_poll_seconds(response.headers.get(POLL_HEADER)),
        )


def _raise_for_status(response: requests.Response) -> None:
    status = response.status_code
    if status == 200:
        return
    if status in (401, 403):
        raise MetricsAuthError(f"HTTP {status}: the agent token was refused")
    if status == 429:
        retry_after = parse_seconds(response.headers.get("Retry-After") or response.headers.get("RateLimit-Reset"))
        raise MetricsRateLimited(f"HTTP 429: rate limited (retry after {retry_after} s)", retry_after)
    raise MetricsServerError(f"HTTP {status} from the metrics API")


def parse_queues(body: Any, queues: Iterable[str]) -> dict[str, QueueMetrics]:
    """Per-queue counts from a `/v3/metrics` body; absent queues are zeros."""
    if not isinstance(body, dict):
        raise MetricsMalformed(f"body must be a JSON object (got {type(body).__name__})")
    jobs = _queue_section(body, "jobs")
    agents = _queue_section(body, "agents")
    result = {}
    for name in queues:
        counts = {
            **_counts(jobs.get(name, {}), _JOB_FIELDS, f"jobs.queues.{name}", optional={"waiting"}),
            **_counts(agents.get(name, {}), _AGENT_FIELDS, f"agents.queues.{name}", optional=set()),
        }
        result[name] = QueueMetrics(**counts)
    return result


def _queue_section(body: dict[str, Any], key: str) -> dict[str, Any]:
    section = body.get(key)
    if not isinstance(section, dict):
        raise MetricsMalformed(f"{key} must be an object (got {type(section).__name__})")
    queues = section.get("queues", {})
    if not isinstance(queues, dict):
        raise MetricsMalformed(f"{key}.queues must be an object (got {type(queues).__name__})")
    return queues


def _counts(raw: Any, fields: tuple[str, ...], where: str, optional: set[str]) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise MetricsMalformed(f"{where} must be an object (got {type(raw).__name__})")
    if not raw:
        return dict.fromkeys(fields, 0)
    counts = {}
    for name in fields:
        value = raw.get(name, 0 if name in optional else None)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise MetricsMalformed(f"{where}.{name} must be a non-negative integer (got {value!r})")
        counts[name] = value
    return counts


def parse_poll_seconds(header: str | None) -> float:
    seconds = parse_seconds(header)
    if seconds is None:
        return DEFAULT_POLL_SECONDS
    return min(MAX_POLL_SECONDS, max(MIN_POLL_SECONDS, seconds))


def parse_seconds(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value >= 0 else None
