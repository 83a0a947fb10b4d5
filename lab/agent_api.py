"""The Buildkite agent API, as much of it as an agent and the scaler use, on loopback.

Agents register with the registration token (401 otherwise) and get an access token,
connect, ping (a ping may hand out a job of their queue), start and finish jobs and
disconnect. `GET /v3/metrics` with the registration token answers what the Agent
Metrics API would from that state, so the real scaler sees the agents the VM
registered and the jobs the lab scheduled. The state is pure; the server is thin.
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Job:
    id: str
    queue: str
    command: str
    state: str = "scheduled"  # scheduled → assigned → running → finished
    agent: str | None = None
    exit_status: int | None = None
    signal_reason: str | None = None
    log: str = ""


@dataclass
class Agent:
    name: str
    queue: str
    connected: bool = False
    job: str | None = None
    events: list[str] = field(default_factory=list)


class AgentApi:
    """The state of one organisation's agents and jobs, and the API's answers."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.agents: dict[str, Agent] = {}  # access token → agent
        self.jobs: dict[str, Job] = {}
        # Notified after every answer, so a waiter sees each change as it happens.
        self._lock = threading.Condition()

    def schedule(self, queue: str, command: str) -> Job:
        with self._lock:
            job = Job(id=f"job-{len(self.jobs) + 1}", queue=queue, command=command)
            self.jobs[job.id] = job
            return job

    def handle(self, method: str, path: str, auth: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            answer = self._route(method, path.removeprefix("/v3"), auth.removeprefix("Token "), body)
            self._lock.notify_all()
            return answer

    def wait_for_state(self, job: Job, state: str, timeout: float) -> bool:
        """Wait until the agents' requests have moved the job to this state; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: job.state == state, timeout)

    def _route(self, method: str, path: str, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if (method, path) == ("POST", "/register"):
            return self._register(token, body)
        if (method, path) == ("GET", "/metrics"):
            return (200, self.metrics()) if token == self.token else (401, {"message": "bad token"})
        agent = self.agents.get(token)
        if agent is None:
            return 401, {"message": "unknown access token"}
        if path.startswith("/jobs/"):
            return self._job(agent, method, path, body)
        if (method, path) == ("POST", "/connect"):
            agent.connected = True
        elif (method, path) == ("POST", "/disconnect"):
            agent.connected = False
        elif (method, path) == ("GET", "/ping"):
            return 200, self._ping(agent)
        else:
            return 404, {"message": f"no {method} {path}"}
        agent.events.append(path.strip("/"))
        return 200, {}

    def _register(self, token: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if token != self.token:
            return 401, {"message": "invalid registration token"}
        tags = dict(tag.split("=", 1) for tag in body.get("tags", []) if "=" in tag)
        access = secrets.token_hex(16)
        self.agents[access] = Agent(name=str(body.get("name", "")), queue=tags.get("queue", "default"))
        return 200, {"access_token": access, "name": body.get("name", "")}

    def _ping(self, agent: Agent) -> dict[str, Any]:
        if agent.job is None:
            job = next((j for j in self.jobs.values() if j.state == "scheduled" and j.queue == agent.queue), None)
            if job is not None:
                job.state, job.agent, agent.job = "assigned", agent.name, job.id
                return {"action": "idle", "job": {"id": job.id, "command": job.command}}
        return {"action": "idle"}

    def _job(self, agent: Agent, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        _, _, job_id, action = ([*path.split("/"), ""])[:4]
        job = self.jobs.get(job_id)
        if job is None or job.agent != agent.name or method != "PUT":
            return 404, {"message": f"no job {job_id} for {agent.name}"}
        if action == "start":
            job.state = "running"
        elif action == "finish":
            job.state, agent.job = "finished", None
            job.exit_status = body.get("exit_status")
            job.signal_reason = body.get("signal_reason")
            job.log = str(body.get("log", ""))
        else:
            return 404, {"message": f"no action {action}"}
        return 200, {}

    def metrics(self) -> dict[str, Any]:
        """The Agent Metrics API body for this state."""
        queues = {j.queue for j in self.jobs.values()} | {a.queue for a in self.agents.values()}
        jobs = {q: {"scheduled": 0, "running": 0, "waiting": 0} for q in queues}
        agents = {q: {"idle": 0, "busy": 0, "total": 0} for q in queues}
        for job in self.jobs.values():
            if job.state == "scheduled":
                jobs[job.queue]["scheduled"] += 1
            elif job.state in ("assigned", "running"):
                jobs[job.queue]["running"] += 1
        for agent in self.agents.values():
            if agent.connected:
                agents[agent.queue]["busy" if agent.job else "idle"] += 1
                agents[agent.queue]["total"] += 1
        return {
            "agents": {"queues": agents},
            "jobs": {"queues": jobs},
            "organization": {"slug": "lab"},
        }


class AgentApiServer:
    """`AgentApi` over HTTP on 127.0.0.1."""

    def __init__(self, api: AgentApi) -> None:
        self.api = api
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def __enter__(self) -> AgentApiServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(api: AgentApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw.strip() else {}
            status, answer = api.handle(
                self.command, self.path.split("?")[0], self.headers.get("Authorization", ""), body
            )
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _serve

        def log_message(self, *_: object) -> None:
            pass

    return Handler
