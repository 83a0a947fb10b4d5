"""An EC2 instance metadata service (IMDSv2 only), served on loopback for one lab VM.

The guest reaches it at 169.254.169.254 through a QEMU guestfwd. It acts as EC2 does
where cloud-init and the instance scripts look: a session token from PUT
/latest/api/token (TTL 1-21600 echoed, 400 otherwise, 403 through a proxy), 401 without
a valid token, 404 for absent paths (a spot notice while there is none), subtrees listed
with a trailing "/" under every version prefix. The instance's state is read through a
callable at every request, so the lab can add tags or a spot notice mid-boot.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROLE = "buildkite-agent-lab"
MAX_TTL = 21600


@dataclass
class InstanceState:
    """What the metadata says about one instance; the lab updates it as EC2 would."""

    instance_id: str
    instance_type: str
    user_data: bytes
    region: str = "us-east-1"
    zone: str = "us-east-1a"
    image_id: str = "ami-12345678"
    lifecycle: str = "on-demand"
    tags: dict[str, str] = field(default_factory=dict)
    spot_action: dict[str, str] | None = None
    rebalance: dict[str, str] | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


class Metadata:
    """The pure part: a request in, an answer out, with the clock passed in."""

    def __init__(self, state: Callable[[], InstanceState]) -> None:
        self._state = state
        self._tokens: dict[str, datetime] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []

    def answer(self, method: str, path: str, headers: dict[str, str], now: datetime) -> Answer:
        self.requests.append((method, path, headers))
        if path == "/latest/api/token":
            return self._token(method, headers, now) if method == "PUT" else Answer(405)
        if method != "GET":
            return Answer(405)
        expires = self._tokens.get(headers.get("x-aws-ec2-metadata-token", ""))
        if expires is None or expires <= now:
            return Answer(401)
        document = self._lookup(path, now)
        if document is None:
            return Answer(404, b"Not Found")
        return Answer(200, document, (("Content-Type", "text/plain"),))

    def _token(self, method: str, headers: dict[str, str], now: datetime) -> Answer:
        if "x-forwarded-for" in headers:
            return Answer(403)
        ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= MAX_TTL:
            return Answer(400)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + timedelta(seconds=int(ttl))
        return Answer(200, token.encode(), (("X-aws-ec2-metadata-token-ttl-seconds", ttl),))

    def _lookup(self, path: str, now: datetime) -> bytes | None:
        parts = path.split("/", 2)  # "", version, rest
        if len(parts) < 3 or not parts[1]:
            return None
        if parts[2] == "user-data":
            # As given at launch: gzip when the scaler compressed it.
            return self._state().user_data
        node: Any = tree(self._state(), now)
        for name in [p for p in parts[2].split("/") if p]:
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        if isinstance(node, dict):
            node = "\n".join(f"{key}/" if isinstance(value, dict) else key for key, value in node.items())
        return str(node).encode()


def tree(state: InstanceState, now: datetime) -> dict[str, Any]:
    """The metadata of `state` as nested folders of documents."""
    identity = {
        "instanceId": state.instance_id,
        "instanceType": state.instance_type,
        "imageId": state.image_id,
        "region": state.region,
        "availabilityZone": state.zone,
        "architecture": "x86_64",
        "accountId": "123456789012",
    }
    meta: dict[str, Any] = {
        "ami-id": state.image_id,
        "instance-id": state.instance_id,
        "instance-type": state.instance_type,
        "instance-life-cycle": state.lifecycle,
        "hostname": f"{state.instance_id}.ec2.internal",
        "local-hostname": f"{state.instance_id}.ec2.internal",
        "local-ipv4": "169.254.0.15",
        "mac": "52:54:00:12:34:56",
        "placement": {"availability-zone": state.zone, "region": state.region},
        "iam": {"info": _iam_info(now), "security-credentials": {ROLE: _credentials(now)}},
        "tags": {"instance": dict(state.tags)},
        "events": {"recommendations": {}},
        "spot": {},
    }
    if state.rebalance is not None:
        meta["events"]["recommendations"]["rebalance"] = json.dumps(state.rebalance)
    if state.spot_action is not None:
        meta["spot"]["instance-action"] = json.dumps(state.spot_action)
    return {
        "meta-data": meta,
        "dynamic": {"instance-identity": {"document": json.dumps(identity)}},
    }


def _iam_info(now: datetime) -> str:
    arn = f"arn:aws:iam::123456789012:instance-profile/{ROLE}"
    return json.dumps({"Code": "Success", "LastUpdated": _iso(now), "InstanceProfileArn": arn})


def _credentials(now: datetime) -> str:
    # moto accepts any keys; the CLI only needs EC2's shape and an expiry ahead.
    return json.dumps(
        {
            "Code": "Success",
            "LastUpdated": _iso(now),
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIALABLABLABLABLAB0",
            "SecretAccessKey": "lab-secret-access-key",
            "Token": "lab-session-token",
            "Expiration": _iso(now + timedelta(hours=6)),
        }
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ImdsServer:
    """`Metadata` over HTTP on 127.0.0.1, on a port of the kernel's choosing."""

    def __init__(self, metadata: Metadata) -> None:
        self.metadata = metadata
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(metadata))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> ImdsServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(metadata: Metadata) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            headers = {key.lower(): value for key, value in self.headers.items()}
            answer = metadata.answer(self.command, self.path.split("?")[0], headers, datetime.now(UTC))
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            self.wfile.write(answer.body)

        do_GET = do_PUT = do_POST = _serve

        def log_message(self, *_: object) -> None:
            pass

    return Handler
