"""A fake Buildkite Agent API served over HTTP on loopback: the metrics API and the Stacks API.

Tests set what it answers; it records every request it received, so tests
can count calls and check the Authorization header. `/v3/token` and
`/v3/stacks/...` are the Stacks API's (`emulators.stacks`), recorded in
`stacks.requests`; every other request is a metrics call, recorded in
`requests`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from emulators.stacks import Answer, FakeStacks


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict → JSON; str → sent as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def metrics_body(queues: dict[str, dict[str, int]]) -> dict[str, Any]:
    """A `/v3/metrics` body; each queue maps count names (scheduled, running,
    waiting, idle, busy, total) to values, missing ones being 0."""
    jobs = {
        name: {key: counts.get(key, 0) for key in ("scheduled", "running", "waiting")}
        for name, counts in queues.items()
    }
    agents = {name: {key: counts.get(key, 0) for key in ("idle", "busy", "total")} for name, counts in queues.items()}
    return {
        "agents": {"idle": 0, "busy": 0, "total": 0, "queues": agents},
        "jobs": {"scheduled": 0, "running": 0, "waiting": 0, "total": 0, "queues": jobs},
        "organization": {"slug": "test"},
    }


def metrics_reply(queues: dict[str, dict[str, int]], poll_seconds: int | None = None) -> Reply:
    """A `/v3/metrics` answer, asking for the next poll in `poll_seconds` when given."""
    headers = {"Buildkite-Agent-Metrics-Poll-Duration": str(poll_seconds)} if poll_seconds else {}
    return Reply(body=metrics_body(queues), headers=headers)


class FakeBuildkite:
    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply(body=metrics_body({}))]
        self.requests: list[dict[str, Any]] = []
        self.stacks = FakeStacks()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v3"

    def answer(self, *replies: Reply) -> None:
        """Answer with these replies in turn, repeating the last one."""
        self.replies = list(replies)

    def serve_metrics(self, queues: dict[str, dict[str, int]], poll_seconds: int | None = None) -> None:
        self.answer(metrics_reply(queues, poll_seconds))

    def start(self) -> FakeBuildkite:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self._stacks("POST")

            def do_GET(self) -> None:
                if self.path.startswith(("/v3/token", "/v3/stacks/")):
                    self._stacks("GET")
                    return
                fake.requests.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("Authorization", ""),
                        "time": time.monotonic(),
                    }
                )
                reply = fake._next_reply()
                time.sleep(reply.delay)
                payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
                self._send(reply.status, reply.headers, payload)

            def _stacks(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                text = self.rfile.read(length).decode() if length else ""
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = text
                answer: Answer = fake.stacks.handle(method, self.path, body, self.headers.get("Authorization", ""))
                time.sleep(answer.delay)
                if answer.body is None:
                    payload = ""
                else:
                    payload = answer.body if isinstance(answer.body, str) else json.dumps(answer.body)
                self._send(answer.status, answer.headers, payload)

            def _send(self, status: int, headers: dict[str, str], payload: str) -> None:
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(payload.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler
