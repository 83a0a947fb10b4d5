"""A fake of Buildkite's Stacks API, as documented (docs/reference: buildkite-stacks-api.md).

Served by `emulators.buildkite.FakeBuildkite` on the same loopback endpoint as
the metrics API, as Buildkite serves both under `agent.buildkite.com/v3`. It
keeps the documented paths, shapes and limits: keys of at most 80 bytes of
`[A-Za-z0-9_-]`, `queue_key` required and `limit` at most 1,000 when listing,
the oldest job first, 1,000 notes per request, 100 per job, `detail` of 1 to
256 characters, partial note errors in a 200, `RateLimit-*` headers on every
answer. Tests set the token's cluster, the queues' jobs and pause flags (in
either spelling), and inject faults per route.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

KEY = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
MAX_LIMIT = 1000
MAX_NOTES_PER_REQUEST = 1000
MAX_NOTES_PER_JOB = 100
MAX_DETAIL = 256
# The documented default limits, per endpoint's scope.
RATE_LIMITS = {"token": 10, "register": 10, "default": 10, "list-scheduled-jobs": 10, "stack-notification": 200}


@dataclass
class Answer:
    status: int
    body: Any = None  # dict → JSON; str → sent as is (a malformed body); None → no body
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class FakeJob:
    id: str
    agent_query_rules: list[str]
    scheduled_at: str
    priority: int = 0

    def listed(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "priority": self.priority,
            "agent_query_rules": self.agent_query_rules,
            "scheduled_at": self.scheduled_at,
            "runnable_at": self.scheduled_at,
            "pipeline": {"slug": "app", "uuid": "p-1"},
            "build": {"uuid": "b-1", "number": 1, "branch": "main"},
            "step": {"key": None},
        }


@dataclass
class FakeQueue:
    jobs: list[FakeJob] = field(default_factory=list)
    paused: bool = False
    # The docs write dispatch_paused, Buildkite's clients read paused: the fake sends one of them.
    pause_flag: str = "dispatch_paused"


class FakeStacks:
    def __init__(self) -> None:
        self.cluster_uuid = ""  # "": an unclustered token, as the fake's default
        self.stacks: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, FakeQueue] = {}
        self.notes: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        # Faults, by route name (token, register, deregister, scheduled-jobs, notifications): answered in turn.
        self.faults: dict[str, list[Answer]] = {}
        # The open question, answered one way: notes only for jobs this stack reserved.
        self.refuse_unreserved_notes = False

    def queue(self, name: str) -> FakeQueue:
        return self.queues.setdefault(name, FakeQueue())

    def fail(self, route: str, *answers: Answer) -> None:
        self.faults.setdefault(route, []).extend(answers)

    def notes_of(self, job_id: str) -> list[str]:
        return [note["detail"] for note in self.notes if note["job_uuid"] == job_id]

    def handle(self, method: str, raw_path: str, body: Any, authorization: str) -> Answer:
        path = urlsplit(raw_path)
        route, key = _route(method, path.path)
        self.requests.append({"method": method, "path": path.path, "route": route, "authorization": authorization})
        if self.faults.get(route):
            return self.faults[route].pop(0)
        if not authorization.startswith("Token "):
            return _error(401, "token missing")
        answer = self._answer(route, key, parse_qs(path.query), body)
        answer.headers.update(_rate_headers(route))
        return answer

    def _answer(self, route: str, key: str, query: dict[str, list[str]], body: Any) -> Answer:
        if route == "token":
            return Answer(200, self._token())
        if route == "register":
            return self._register(body)
        if key not in self.stacks:
            return _error(404, "No stack found")
        if route == "deregister":
            del self.stacks[key]
            return Answer(204)
        if route == "scheduled-jobs":
            return self._list(query)
        if route == "notifications":
            return self._notify(body)
        return _error(404, "Not found")

    def _token(self) -> dict[str, Any]:
        return {
            "uuid": "t-1",
            "description": "fake",
            "token_type": "cluster" if self.cluster_uuid else "unclustered",
            "organization_slug": "test",
            "organization_uuid": "o-1",
            "cluster_uuid": self.cluster_uuid,
            "cluster_name": "fake" if self.cluster_uuid else "",
        }

    def _register(self, body: Any) -> Answer:
        if not isinstance(body, dict):
            return _error(400, "body must be an object")
        for name in ("key", "type", "queue_key", "metadata"):
            if name not in body:
                return _error(422, f"{name} is required")
        if not isinstance(body["key"], str) or not KEY.match(body["key"]):
            return _error(422, "key must be at most 80 letters, digits, '_' or '-'")
        metadata = body["metadata"]
        if not isinstance(metadata, dict) or len(metadata) > 100:
            return _error(422, "metadata must be an object of at most 100 keys")
        if any(len(k) > 64 or not isinstance(v, str) or len(v) > 256 for k, v in metadata.items()):
            return _error(422, "metadata keys are at most 64 and values at most 256 characters")
        new = body["key"] not in self.stacks
        self.stacks[body["key"]] = dict(body)
        stack = {**body, "id": "s-1", "cluster_queue_key": body["queue_key"], "state": "connected"}
        return Answer(201 if new else 200, stack)

    def _list(self, query: dict[str, list[str]]) -> Answer:
        queue_key = (query.get("queue_key") or [""])[0]
        if not queue_key:
            return _error(400, "queue_key is required")
        limit_text = (query.get("limit") or ["100"])[0]
        if not limit_text.isdigit() or not 0 < int(limit_text) <= MAX_LIMIT:
            return _error(400, "limit must be a positive integer of at most 1000")
        queue = self.queues.get(queue_key)
        if queue is None:
            return _error(404, "No queue found")
        jobs = sorted(queue.jobs, key=lambda job: job.scheduled_at)
        page = jobs[: int(limit_text)]
        more = len(jobs) > len(page)
        return Answer(
            200,
            {
                "jobs": [job.listed() for job in page],
                "page_info": {"has_next_page": more, "end_cursor": "Y3Vyc29y" if more else None},
                "cluster_queue": {"id": f"q-{queue_key}", queue.pause_flag: queue.paused},
            },
        )

    def _notify(self, body: Any) -> Answer:
        notes = body.get("notifications") if isinstance(body, dict) else None
        if not isinstance(notes, list) or not 0 < len(notes) <= MAX_NOTES_PER_REQUEST:
            return _error(400, "notifications must be an array of 1 to 1000")
        counts = Counter(note["job_uuid"] for note in self.notes)
        refused: dict[str, list[int]] = {}
        for index, note in enumerate(notes):
            problem = self._refusal(note, counts)
            if problem:
                refused.setdefault(problem, []).append(index)
                continue
            counts[note["job_uuid"]] += 1
            self.notes.append(dict(note))
        return Answer(200, {"errors": [{"error": error, "indexes": indexes} for error, indexes in refused.items()]})

    def _refusal(self, note: Any, counts: Counter[str]) -> str:
        if not isinstance(note, dict) or not isinstance(note.get("job_uuid"), str):
            return "job_uuid is required"
        detail = note.get("detail")
        if not isinstance(detail, str) or not 0 < len(detail) <= MAX_DETAIL:
            return "detail must be 1 to 256 characters"
        if self.refuse_unreserved_notes:
            return "job is not reserved by this stack"
        if counts[note["job_uuid"]] >= MAX_NOTES_PER_JOB:
            return "job stack notification count exceeded"
        return ""


def _route(method: str, path: str) -> tuple[str, str]:
    """(route name, stack key) of a request path under /v3."""
    parts = [unquote(part) for part in path.split("/") if part]
    if parts == ["v3", "token"] and method == "GET":
        return "token", ""
    if parts == ["v3", "stacks", "register"] and method == "POST":
        return "register", ""
    if len(parts) == 4 and parts[:2] == ["v3", "stacks"]:
        routes = {("POST", "deregister"), ("GET", "scheduled-jobs"), ("POST", "notifications")}
        if (method, parts[3]) in routes:
            return parts[3], parts[2]
    return "unknown", ""


def _error(status: int, message: str) -> Answer:
    return Answer(status, {"message": message})


def _rate_headers(route: str) -> dict[str, str]:
    scope = {"notifications": "stack-notification", "scheduled-jobs": "list-scheduled-jobs"}.get(route, "default")
    limit = RATE_LIMITS.get(scope, 10)
    return {
        "RateLimit-Scope": scope,
        "RateLimit-Limit": str(limit),
        "RateLimit-Remaining": str(limit - 1),
        "RateLimit-Reset": "1",
    }


def rate_limited(scope: str = "list-scheduled-jobs", retry_after: int = 2) -> Answer:
    """A documented 429: its body, Retry-After and the rate-limit headers."""
    limit = RATE_LIMITS.get(scope, 10)
    return Answer(
        429,
        {"message": "rate limited", "scope": scope, "limit": limit, "current": limit + 1, "reset": retry_after},
        {
            "Retry-After": str(retry_after),
            "RateLimit-Scope": scope,
            "RateLimit-Limit": str(limit),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(retry_after),
        },
    )
