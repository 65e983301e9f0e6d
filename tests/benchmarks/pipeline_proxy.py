"""A loopback HTTP/1.1 proxy that adds a fixed delay to every request (not connection).

    python -m tests.benchmarks.pipeline_proxy --upstream http://127.0.0.1:PORT --delay 0.015

Prints ``{"url": ...}`` once listening and relays until SIGTERM. Each client connection
gets its own upstream connection, kept alive as long as the client's. Requests are
parsed just enough to find where each ends (``Content-Length`` or chunked) and each
request's head is held ``--delay`` seconds before it is forwarded; responses are parsed
the same way (interim ``1xx`` such as ``100 Continue`` are relayed at once; a ``HEAD``
or ``204``/``304`` response has no body), so a keep-alive connection carrying many
requests pays the delay once per request. Headers are forwarded untouched (the ``Host``
the client signed with SigV4 reaches the server as it was signed).

The proxy shares the benchmark's two cores with the client and the servers, so it
should cost as little CPU as a network would: each direction of a connection is a
thread on blocking sockets, heads are read with ``MSG_PEEK`` (never past their end),
and bodies of known length move socket -> pipe -> socket with ``splice(2)``, without
passing through Python. (The asyncio version it replaced copied every body through
Python buffers: 0.37 CPU s for N = 50, a tenth of what SeaweedFS used.) Chunked bodies,
rare here, are relayed through Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import queue
import signal
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import orjson

MAX_HEAD = 64 * 1024
PIPE_SIZE = 1024 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _Closed(Exception):
    pass


def _head(sock: socket.socket) -> bytes | None:
    """One message head, up to and including the blank line, and not a byte more;
    None at a clean EOF."""
    while True:
        peek = sock.recv(MAX_HEAD, socket.MSG_PEEK)
        if not peek:
            return None
        end = peek.find(b"\r\n\r\n")
        if end >= 0:
            return _recv_exactly(sock, end + 4)
        if len(peek) >= MAX_HEAD:
            raise _Closed()
        # the head has not all arrived: wait for more than what is already there
        _wait_more(sock, len(peek))


def _wait_more(sock: socket.socket, have: int) -> None:
    deadline = time.monotonic() + 30
    while len(sock.recv(MAX_HEAD, socket.MSG_PEEK)) <= have:
        if time.monotonic() > deadline:
            raise _Closed()
        time.sleep(0.0005)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts = []
    while n > 0:
        data = sock.recv(n)
        if not data:
            raise _Closed()
        parts.append(data)
        n -= len(data)
    return b"".join(parts)


def _line(sock: socket.socket) -> bytes:
    """One CRLF-terminated line (chunk sizes and trailers), read without over-reading."""
    while True:
        peek = sock.recv(MAX_HEAD, socket.MSG_PEEK)
        if not peek:
            raise _Closed()
        end = peek.find(b"\r\n")
        if end >= 0:
            return _recv_exactly(sock, end + 2)
        _wait_more(sock, len(peek))


def _framing(head: bytes) -> tuple[str, int | None, bool]:
    """(first line, Content-Length or None, chunked)."""
    lines = head.decode("latin-1").split("\r\n")
    length, chunked = None, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    return lines[0], length, chunked


class _Pipe:
    """A kernel pipe to splice through, one per relay thread."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.w, _F_SETPIPE_SZ, PIPE_SIZE)

    def copy(self, src: socket.socket, dst: socket.socket, n: int) -> None:
        """Move exactly ``n`` bytes from ``src`` to ``dst`` inside the kernel."""
        while n > 0:
            moved = os.splice(src.fileno(), self.w, min(n, PIPE_SIZE))
            if moved == 0:
                raise _Closed()
            n -= moved
            while moved > 0:
                moved -= os.splice(self.r, dst.fileno(), moved)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def _copy_chunked(src: socket.socket, dst: socket.socket, pipe: _Pipe) -> None:
    while True:
        line = _line(src)
        dst.sendall(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the blank line
                trailer = _line(src)
                dst.sendall(trailer)
                if trailer == b"\r\n":
                    return
        pipe.copy(src, dst, size + 2)


def _copy_body(
    src: socket.socket, dst: socket.socket, pipe: _Pipe, length: int | None, chunked: bool
) -> None:
    if chunked:
        _copy_chunked(src, dst, pipe)
    elif length:
        pipe.copy(src, dst, length)


class Proxy:
    def __init__(self, host: str, port: int, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self.requests = 0
        self._count = threading.Lock()

    def handle(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection((self.host, self.port))
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        methods: queue.SimpleQueue[str] = queue.SimpleQueue()

        def requests(pipe: _Pipe) -> None:
            while (head := _head(client)) is not None:
                first, length, chunked = _framing(head)
                time.sleep(self.delay)
                with self._count:
                    self.requests += 1
                methods.put(first.split(" ", 1)[0].upper())
                upstream.sendall(head)
                _copy_body(client, upstream, pipe, length, chunked)

        def responses(pipe: _Pipe) -> None:
            while (head := _head(upstream)) is not None:
                first, length, chunked = _framing(head)
                client.sendall(head)
                status = int(first.split(" ", 2)[1])
                if 100 <= status < 200:
                    continue  # interim: the final response follows for the same request
                method = methods.get()
                if method == "HEAD" or status in (204, 304):
                    continue
                if chunked or length is not None:
                    _copy_body(upstream, client, pipe, length, chunked)
                else:  # delimited by the end of the connection
                    while data := upstream.recv(PIPE_SIZE):
                        client.sendall(data)
                    return

        def relay(direction: str) -> None:
            pipe = _Pipe()
            try:
                (requests if direction == "requests" else responses)(pipe)
            except (OSError, _Closed, ValueError, IndexError):
                pass
            finally:
                pipe.close()
                # either side ending ends the pair: wake the other thread up
                for s in (client, upstream):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)

        threads = [threading.Thread(target=relay, args=(d,), daemon=True) for d in ("requests",)]
        threads[0].start()
        relay("responses")
        threads[0].join()
        client.close()
        upstream.close()


def serve(upstream: str, delay: float) -> None:
    parts = urlsplit(upstream)
    assert parts.hostname and parts.port
    proxy = Proxy(parts.hostname, parts.port, delay)
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    port = listener.getsockname()[1]
    sys.stdout.write(orjson.dumps({"url": f"http://127.0.0.1:{port}"}).decode() + "\n")
    sys.stdout.flush()
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=proxy.handle, args=(conn,), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    while not stop.is_set():
        stop.wait(0.5)
    listener.close()
    sys.stderr.write(f"proxy: {proxy.requests} requests delayed by {delay}s\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_proxy")
    parser.add_argument("--upstream", required=True, help="http://host:port of the server")
    parser.add_argument("--delay", type=float, default=0.015, help="seconds per request")
    args = parser.parse_args()
    serve(args.upstream, args.delay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
