"""A stand-in for a custom resource's ResponseURL (a pre-signed S3 URL in AWS), served on
loopback: it records each PUT, as the answer CloudFormation would get."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ResponseBucket:
    """Stands in for the pre-signed S3 URL: records each PUT's headers and JSON body."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.puts: list[dict[str, Any]] = []
        bucket = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                length = int(self.headers["Content-Length"])
                bucket.puts.append(
                    {"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length))}
                )
                self.send_response(bucket.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/cfn-response/bk?X-Amz-Signature=abc"

    def answer(self) -> dict[str, Any]:
        (put,) = self.puts
        return put["body"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
