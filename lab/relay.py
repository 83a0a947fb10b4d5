"""One guest connection to a loopback port: QEMU's guestfwd starts this per connection,
wired to its stdin and stdout. Standard library only, no imports of the lab."""

from __future__ import annotations

import socket
import sys
import threading


def relay(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as upstream:

        def upload() -> None:
            while chunk := sys.stdin.buffer.read1(65536):
                upstream.sendall(chunk)
            upstream.shutdown(socket.SHUT_WR)

        threading.Thread(target=upload, daemon=True).start()
        while chunk := upstream.recv(65536):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()


if __name__ == "__main__":
    relay(int(sys.argv[1]))
