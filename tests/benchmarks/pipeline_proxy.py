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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from urllib.parse import urlsplit

import orjson

BUF = 256 * 1024


class _Closed(Exception):
    pass


async def _head(reader: asyncio.StreamReader) -> bytes | None:
    """One message head, up to and including the blank line; None at a clean EOF."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise _Closed() from None
        return None


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


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(n, BUF))
        if not data:
            raise _Closed()
        writer.write(data)
        n -= len(data)
        await writer.drain()


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the blank line
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await _copy(reader, writer, size + 2)


async def _copy_body(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, length: int | None, chunked: bool
) -> None:
    if chunked:
        await _copy_chunked(reader, writer)
    elif length:
        await _copy(reader, writer, length)


class Proxy:
    def __init__(self, host: str, port: int, delay: float) -> None:
        self.host, self.port, self.delay = host, port, delay
        self.requests = 0

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(self.host, self.port, limit=BUF)
        except OSError:
            cwriter.close()
            return
        methods: asyncio.Queue[str] = asyncio.Queue()

        async def requests() -> None:
            while True:
                head = await _head(creader)
                if head is None:
                    return
                first, length, chunked = _framing(head)
                await asyncio.sleep(self.delay)
                self.requests += 1
                uwriter.write(head)
                methods.put_nowait(first.split(" ", 1)[0].upper())
                await _copy_body(creader, uwriter, length, chunked)
                await uwriter.drain()

        async def responses() -> None:
            while True:
                head = await _head(ureader)
                if head is None:
                    return
                first, length, chunked = _framing(head)
                cwriter.write(head)
                status = int(first.split(" ", 2)[1])
                if 100 <= status < 200:
                    await cwriter.drain()
                    continue  # interim: the final response follows for the same request
                method = await methods.get()
                if method == "HEAD" or status in (204, 304):
                    pass
                elif chunked or length is not None:
                    await _copy_body(ureader, cwriter, length, chunked)
                else:  # delimited by the end of the connection
                    while data := await ureader.read(BUF):
                        cwriter.write(data)
                        await cwriter.drain()
                    return
                await cwriter.drain()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task
            for w in (uwriter, cwriter):
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()


async def serve(upstream: str, delay: float) -> None:
    parts = urlsplit(upstream)
    assert parts.hostname and parts.port
    proxy = Proxy(parts.hostname, parts.port, delay)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0, limit=BUF)
    port = server.sockets[0].getsockname()[1]
    sys.stdout.write(orjson.dumps({"url": f"http://127.0.0.1:{port}"}).decode() + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    sys.stderr.write(f"proxy: {proxy.requests} requests delayed by {delay}s\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.pipeline_proxy")
    parser.add_argument("--upstream", required=True, help="http://host:port of the server")
    parser.add_argument("--delay", type=float, default=0.015, help="seconds per request")
    args = parser.parse_args()
    asyncio.run(serve(args.upstream, args.delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
