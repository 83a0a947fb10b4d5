"""The guest's AWS endpoint: a loopback proxy in front of the moto server.

moto checks no IAM, so a refused call is injected here, at the AWS front, as EC2 would
answer it (403 UnauthorizedOperation); everything else goes to moto unchanged. It also
records the actions the guest called, which is how the lab sees an instance stop itself.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

UNAUTHORIZED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code>'
    b"<Message>You are not authorized to perform this operation.</Message></Error></Errors>"
    b"<RequestID>lab-refusal</RequestID></Response>"
)


def action_of(body: bytes) -> str:
    """The query-protocol action of a request body (EC2's), or "" for other protocols."""
    values = parse_qs(body.decode("utf-8", errors="replace")).get("Action", [""])
    return values[0]


@dataclass
class Front:
    """What the front refuses and what it saw; `on_action` hears each action as it passes."""

    refused: set[str] = field(default_factory=set)
    actions: list[str] = field(default_factory=list)
    on_action: Callable[[str, bytes], None] = lambda action, body: None

    def refusal(self, body: bytes) -> tuple[int, bytes] | None:
        action = action_of(body)
        self.actions.append(action)
        if action in self.refused:
            return 403, UNAUTHORIZED
        self.on_action(action, body)
        return None


class AwsFrontServer:
    """`Front` over HTTP on 127.0.0.1, forwarding to moto at `moto_port`."""

    def __init__(self, front: Front, moto_port: int) -> None:
        self.front = front
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(front, moto_port))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def __enter__(self) -> AwsFrontServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(front: Front, moto_port: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            refusal = front.refusal(body)
            if refusal is not None:
                self._reply(refusal[0], {"Content-Type": "text/xml"}, refusal[1])
                return
            upstream = http.client.HTTPConnection("127.0.0.1", moto_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            upstream.request(self.command, self.path, body, headers)
            response = upstream.getresponse()
            data = response.read()
            upstream.close()
            keep = {k: v for k, v in response.getheaders() if k.lower() not in ("content-length", "transfer-encoding")}
            self._reply(response.status, keep, data)

        def _reply(self, status: int, headers: dict[str, str], data: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _serve

        def log_message(self, *_: object) -> None:
            pass

    return Handler
