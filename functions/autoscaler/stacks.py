"""Buildkite's Stacks API client: the token's cluster, a stack per queue, scheduled jobs, notes.

I/O only, one method per endpoint the product uses (observe mode: no
reservations). Every way a call can go wrong is a `StacksError`, so the
scaler can count it and go on scaling from the metrics. The cluster token is
held in a `Secret`; no request, response body or header is ever put into an
exception text, and no job's `env` is ever read.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests

from autoscaler.buildkite import Secret, parse_seconds

# Shorter than the metrics call's: a poll makes one list call per queue, and each must
# leave time for the poll's EC2 calls (see STACKS_CALL_SECONDS).
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0
STACKS_CALL_SECONDS = CONNECT_TIMEOUT + READ_TIMEOUT
# Buildkite advises reading the first page only: the list is a view of demand, not a count.
FIRST_PAGE = 100
# A note's `detail`: at most 256 characters; Buildkite's own stack crops at 255 to be safe.
NOTE_LIMIT = 255
STACK_TYPE = "custom"
_KEY_PART = re.compile(r"[^A-Za-z0-9_-]")


class StacksError(Exception):
    """A Stacks API call failed; observe mode sits this poll out."""

    def __init__(self, kind: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


@dataclass(frozen=True)
class ScheduledJob:
    id: str
    agent_query_rules: tuple[str, ...]
    priority: int = 0
    scheduled_at: str = ""


@dataclass(frozen=True)
class QueueJobs:
    """One queue's first page of scheduled jobs, and whether its dispatch is paused."""

    paused: bool
    jobs: tuple[ScheduledJob, ...]


@dataclass(frozen=True)
class Note:
    job_id: str
    detail: str


def stack_key(fleet: str, queue: str, account: str, region: str) -> str:
    """Unique in the organisation: two deployments of one fleet name in two accounts or regions
    would otherwise share a key, and one's deregister would break the other. At most 80 bytes
    of letters, digits, '_' and '-'; the hash keeps names that the cropping makes equal apart."""
    digest = hashlib.sha256("\x1f".join((account, region, fleet, queue)).encode()).hexdigest()[:10]
    # bkas-<30>-<30>-<10>: 77 bytes at most.
    readable = "-".join(_KEY_PART.sub("_", part)[:30] for part in ("bkas", fleet, queue))
    return f"{readable}-{digest}"


def scope_of(arn: str) -> tuple[str, str]:
    """(account, region) from an ARN (a Lambda function's, a CloudFormation stack's)."""
    parts = arn.split(":")
    if len(parts) < 6 or not parts[3] or not parts[4]:
        raise ValueError(f"not an ARN with a region and an account (got {arn!r})")
    return parts[4], parts[3]


class StacksClient:
    """The Stacks API at `{endpoint}` (the agent endpoint, `https://agent.buildkite.com/v3`)."""

    def __init__(self, endpoint: str, token: Callable[[], Secret], session: requests.Session | None = None) -> None:
        self._base = endpoint.rstrip("/")
        self._token = token
        self._session = session or requests.Session()

    def cluster(self) -> str:
        """The token's cluster UUID; "" for an unclustered token (GET /v3/token, as Buildkite's own stack reads it)."""
        body = self._call("GET", "/token", "token")
        cluster = body.get("cluster_uuid") if isinstance(body, dict) else None
        if cluster is not None and not isinstance(cluster, str):
            raise StacksError("malformed", f"token: cluster_uuid must be a string (got {type(cluster).__name__})")
        return cluster or ""

    def register(self, key: str, queue: str, metadata: Mapping[str, str]) -> None:
        body = {"key": key, "type": STACK_TYPE, "queue_key": queue, "metadata": dict(metadata)}
        self._call("POST", "/stacks/register", "register", json=body)

    def deregister(self, key: str) -> None:
        self._call("POST", f"/stacks/{_segment(key)}/deregister", "deregister")

    def scheduled_jobs(self, key: str, queue: str, limit: int = FIRST_PAGE) -> QueueJobs:
        body = self._call(
            "GET",
            f"/stacks/{_segment(key)}/scheduled-jobs",
            "scheduled-jobs",
            params={"queue_key": queue, "limit": str(limit)},
        )
        return parse_scheduled_jobs(body)

    def notify(self, key: str, notes: Sequence[Note], timestamp: str) -> list[tuple[str, list[int]]]:
        """Post notes; returns the refused ones as (message, indexes). A partly bad batch is a 200."""
        body = {
            "notifications": [
                {"job_uuid": note.job_id, "detail": note.detail[:NOTE_LIMIT], "timestamp": timestamp} for note in notes
            ]
        }
        answer = self._call("POST", f"/stacks/{_segment(key)}/notifications", "notifications", json=body)
        return parse_note_errors(answer)

    def _call(self, method: str, path: str, what: str, **kwargs: Any) -> Any:
        try:
            response = self._session.request(
                method,
                self._base + path,
                headers={"Authorization": f"Token {self._token().reveal()}", "Accept": "application/json"},
                timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                allow_redirects=False,
                **kwargs,
            )
        except requests.Timeout:
            raise StacksError("timeout", f"{what}: no answer within {READ_TIMEOUT:g} s") from None
        except requests.RequestException as error:
            # The exception text may quote the request; keep only its type.
            raise StacksError("network", f"{what}: request failed: {type(error).__name__}") from None
        _raise_for_status(response, what)
        if response.status_code == 204 or not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise StacksError("malformed", f"{what}: body is not JSON") from None


def _segment(text: str) -> str:
    # Buildkite's router rejects dots in some segments: escaped as its Go client does.
    return quote(text, safe="").replace(".", "%2E")


def _raise_for_status(response: requests.Response, what: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if status == 429:
        retry_after = parse_seconds(response.headers.get("Retry-After") or response.headers.get("RateLimit-Reset"))
        scope = response.headers.get("RateLimit-Scope", "")
        raise StacksError("rate_limited", f"{what}: HTTP 429 ({scope or 'no scope'})", retry_after)
    kind = "auth" if status in (401, 403) else "server" if status >= 500 else "refused"
    raise StacksError(kind, f"{what}: HTTP {status}: {_message(response)}", None)


def _message(response: requests.Response) -> str:
    """The error body's `message`, cropped; Buildkite's error bodies carry no secret, but a
    proxy's might echo a header, so nothing else of the body is kept."""
    try:
        message = response.json().get("message", "")
    except (ValueError, AttributeError):
        return "no message"
    return str(message)[:120] if message else "no message"


def parse_scheduled_jobs(body: Any) -> QueueJobs:
    if not isinstance(body, dict) or not isinstance(body.get("jobs"), list):
        raise StacksError("malformed", "scheduled-jobs: body must be an object with a jobs list")
    queue = body.get("cluster_queue") or {}
    if not isinstance(queue, dict):
        raise StacksError("malformed", "scheduled-jobs: cluster_queue must be an object")
    # The docs spell it dispatch_paused, Buildkite's Go client and Kubernetes stack paused.
    paused = queue.get("dispatch_paused") is True or queue.get("paused") is True
    return QueueJobs(paused, tuple(_job(raw, index) for index, raw in enumerate(body["jobs"])))


def _job(raw: Any, index: int) -> ScheduledJob:
    where = f"scheduled-jobs: jobs[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or not raw["id"]:
        raise StacksError("malformed", f"{where} must be an object with an id")
    rules = raw.get("agent_query_rules") or []
    if not isinstance(rules, list) or not all(isinstance(rule, str) for rule in rules):
        raise StacksError("malformed", f"{where}.agent_query_rules must be a list of strings")
    priority = raw.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise StacksError("malformed", f"{where}.priority must be an integer")
    scheduled_at = raw.get("scheduled_at") or ""
    return ScheduledJob(raw["id"], tuple(rules), priority, scheduled_at if isinstance(scheduled_at, str) else "")


def parse_note_errors(body: Any) -> list[tuple[str, list[int]]]:
    errors = body.get("errors", []) if isinstance(body, dict) else None
    if not isinstance(errors, list):
        raise StacksError("malformed", "notifications: errors must be a list")
    refused = []
    for error in errors:
        if isinstance(error, dict) and isinstance(error.get("indexes"), list):
            refused.append((str(error.get("error", ""))[:120], [i for i in error["indexes"] if isinstance(i, int)]))
    return refused
