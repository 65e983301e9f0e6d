"""A details-only ID Pass server for the pipeline benchmark, serving pre-rendered bodies.

    python -m tests.benchmarks.pipeline_server --passes N --seed S --token T \\
        --ledger FILE [--delay SECONDS]

Creates ``N`` complete passes (all 12 slots) with the sandbox's own records and
:func:`archiver.sandbox.details.build_details`, writes their ledger (JSONL, as
``/_sandbox/ledger`` does), renders every details body once as chunks
(:mod:`tests.benchmarks.pipeline_data`), prints ``{"url": ...}`` and serves
``POST /idpass/details`` until SIGTERM: a thread per connection, HTTP/1.1 keep-alive,
the whole response written with one ``sendmsg`` after ``--delay`` seconds. The
sandbox proper renders and Base64-encodes every body per request (about 8 MB each),
which would put the server's CPU into every measurement on a 2-core machine.
"""

from __future__ import annotations

import argparse
import hmac
import signal
import socket
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType

import orjson

from tests.benchmarks.pipeline_data import details_chunks, make_passes, pool


def send_all(sock: socket.socket, chunks: list[bytes]) -> None:
    """Write every chunk with scatter-gather ``sendmsg``, resuming after short writes."""
    views = [memoryview(c) for c in chunks if c]
    while views:
        sent = sock.sendmsg(views[:1024])
        while sent:
            if sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            else:
                views[0] = views[0][sent:]
                sent = 0


def _json_head(status: str, length: int) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    ).encode("ascii")


def make_handler(
    bodies: dict[str, list[bytes]], token: str, delay: float
) -> type[BaseHTTPRequestHandler]:
    expected = f"Bearer {token}".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _error(self, status: str, code: str) -> None:
            body = orjson.dumps({"error": {"code": code, "message": code}})
            send_all(self.connection, [_json_head(status, len(body)), body])

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            auth = (self.headers.get("Authorization") or "").encode()
            if not hmac.compare_digest(auth, expected):
                self._error("401 Unauthorized", "unauthorized")
                return
            if self.path != "/idpass/details":
                self._error("404 Not Found", "not_found")
                return
            try:
                pass_id = orjson.loads(raw).get("id")
            except (orjson.JSONDecodeError, AttributeError):
                self._error("400 Bad Request", "invalid_json")
                return
            chunks = bodies.get(pass_id) if isinstance(pass_id, str) else None
            if chunks is None:
                self._error("404 Not Found", "pass_not_found")
                return
            if delay:
                time.sleep(delay)
            size = sum(len(c) for c in chunks)
            send_all(self.connection, [_json_head("200 OK", size), *chunks])

    return Handler


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_server")
    parser.add_argument("--passes", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--ledger", type=Path, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()

    now = datetime.now(UTC)
    pool()
    records = make_passes(args.passes, args.seed, now)
    bodies = {r.id: details_chunks(r, now) for r in records}
    args.ledger.write_bytes(b"".join(orjson.dumps(r.ledger_entry()) + b"\n" for r in records))

    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(bodies, args.token, args.delay))
    server.daemon_threads = True
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    sys.stdout.write(orjson.dumps({"url": f"http://127.0.0.1:{port}"}).decode() + "\n")
    sys.stdout.flush()
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
