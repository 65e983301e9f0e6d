"""The client over real sockets: the urllib3 transport and the Base64-preserving JSON
loader, against a small loopback server that misbehaves on purpose."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest

from archiver.core.images import decode_base64
from archiver.errors import (
    ApiMalformedResponse,
    ApiServerError,
    ApiTransportError,
    UnrequestedContentEncoding,
)
from archiver.idpass.client import IdPassClient, load_json
from archiver.idpass.transport import BodySlot
from tests.helpers import make_jpeg

PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"
JPEG = make_jpeg()
B64 = base64.b64encode(JPEG).decode()

Handler = Callable[[socket.socket, bytes], None]
T = TypeVar("T")


def _doc(images: object) -> dict[str, object]:
    return {
        "id": PID,
        "status": "complete",
        "verification_status": "passed",
        "config": {"image_retention_days": 30, "link_validity_days": 7},
        "created_at": "2026-01-01T00:00:00Z",
        "completed_at": "2026-01-01T00:10:00Z",
        "images": images,
    }


def _answer(sock: socket.socket, body: bytes, *, status: str = "200 OK", extra: str = "") -> None:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    sock.sendall(head.encode() + body)


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += sock.recv(65536)
    return head


@pytest.fixture
def server() -> Iterator[Callable[[Handler], str]]:
    """``server(handler)`` → base URL of a loopback server calling ``handler`` for every
    request (on keep-alive connections, until the client closes)."""
    listeners: list[socket.socket] = []

    def start(handler: Handler) -> str:
        lst = socket.create_server(("127.0.0.1", 0))
        listeners.append(lst)

        def serve_conn(conn: socket.socket) -> None:
            with conn:
                try:
                    while head := _read_request(conn):
                        handler(conn, head)
                except OSError:
                    pass

        def accept() -> None:
            while True:
                try:
                    conn, _ = lst.accept()
                except OSError:
                    return
                threading.Thread(target=serve_conn, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return f"http://127.0.0.1:{lst.getsockname()[1]}"

    yield start
    for lst in listeners:
        lst.close()


async def test_reads_a_details_response_over_a_real_socket(server):
    seen: list[bytes] = []

    def handler(sock: socket.socket, head: bytes) -> None:
        seen.append(head)
        _answer(sock, json.dumps(_doc({"probe": B64, "id_photo": None})).encode())

    async with IdPassClient(server(handler), "tok-abc") as api:
        read = await api.details(PID)
        again = await api.details(PID)  # the same keep-alive connection
    assert base64.b64decode(read.images["probe"]) == JPEG
    assert read.null_slots == ("id_photo",)
    assert again.details.id == PID
    assert b"authorization: bearer tok-abc" in seen[0].lower()
    assert seen[0].startswith(b"POST /idpass/details HTTP/1.1")


async def test_escaped_slashes_in_base64_are_unescaped(server):
    """Some JSON encoders (PHP's by default) write ``/`` as ``\\/``."""
    escaped = json.dumps(_doc({"probe": B64})).replace("/", "\\/").encode()
    assert b"\\/" in escaped

    def handler(sock: socket.socket, head: bytes) -> None:
        _answer(sock, escaped)

    async with IdPassClient(server(handler), "tok") as api:
        read = await api.details(PID)
    assert base64.b64decode(read.images["probe"]) == JPEG
    assert read.record["created_at"] == "2026-01-01T00:00:00Z"


async def test_gzip_encoded_body_is_refused_not_decoded(server):
    """The request asks for identity; a gzip answer is refused (never decompressed)."""
    body = gzip.compress(json.dumps(_doc({"probe": B64})).encode())
    seen: list[bytes] = []

    def handler(sock: socket.socket, head: bytes) -> None:
        seen.append(head)
        _answer(sock, body, extra="Content-Encoding: gzip\r\n")

    async with IdPassClient(server(handler), "tok") as api:
        with pytest.raises(UnrequestedContentEncoding) as info:
            await api.details(PID)
    assert info.value.reason == "unrequested_content_encoding"
    assert b"accept-encoding: identity" in seen[0].lower().split(b"\r\n")


async def test_a_body_cut_short_is_a_transport_error(server):
    def handler(sock: socket.socket, head: bytes) -> None:
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'{"id": "' + b"x" * 500
        )
        sock.shutdown(socket.SHUT_RDWR)
        raise OSError("closed")

    async with IdPassClient(server(handler), "tok") as api:
        with pytest.raises(ApiTransportError) as info:
            await api.details(PID)
    assert info.value.retryable
    assert PID not in str(info.value)


async def test_a_silent_server_times_out(server):
    def handler(sock: socket.socket, head: bytes) -> None:
        time.sleep(3)

    async with IdPassClient(server(handler), "tok", read_timeout=0.5) as api:
        began = time.monotonic()
        with pytest.raises(ApiTransportError, match="timed out"):
            await api.details(PID)
    assert time.monotonic() - began < 2.5


async def test_connection_refused_is_a_transport_error():
    with socket.create_server(("127.0.0.1", 0)) as lst:
        port = lst.getsockname()[1]
    async with IdPassClient(f"http://127.0.0.1:{port}", "tok", connect_timeout=1) as api:
        with pytest.raises(ApiTransportError, match="transport failure"):
            await api.details(PID)


async def test_http_errors_and_non_json_over_a_real_socket(server):
    answers = iter(
        [
            ("503 Service Unavailable", b'{"error": {"code": "maintenance"}}'),
            ("200 OK", b"<html>gateway</html>"),
            ("200 OK", b'{"id": "' + PID.encode() + b'", "images": {"probe": "AAA'),
        ]
    )

    def handler(sock: socket.socket, head: bytes) -> None:
        status, body = next(answers)
        _answer(sock, body, status=status)

    async with IdPassClient(server(handler), "tok") as api:
        with pytest.raises(ApiServerError, match="maintenance"):
            await api.details(PID)
        with pytest.raises(ApiMalformedResponse, match="not valid JSON"):
            await api.details(PID)
        with pytest.raises(ApiMalformedResponse, match="not valid JSON"):
            await api.details(PID)


# -- body slots: more requests in flight than bodies held ---------------------------


def _with_slot(
    slots: asyncio.Semaphore, call: Callable[[BodySlot], Awaitable[T]]
) -> asyncio.Task[T]:
    """``call(slot)`` in a task of its own with a :class:`BodySlot` on ``slots``,
    released when the call returns (as the pipeline does once a pass is decoded)."""

    async def run() -> T:
        slot = BodySlot(slots)
        try:
            return await call(slot)
        finally:
            slot.release()

    return asyncio.create_task(run())


async def test_a_body_is_read_only_once_a_body_slot_is_free(server):
    answered = threading.Event()

    def handler(sock: socket.socket, head: bytes) -> None:
        _answer(sock, json.dumps(_doc({"probe": B64})).encode())
        answered.set()

    slots = asyncio.Semaphore(1)
    async with IdPassClient(server(handler), "tok") as api:
        await slots.acquire()  # another pass holds the only slot
        task = _with_slot(slots, lambda slot: api.details(PID, body_slot=slot))
        assert await asyncio.to_thread(answered.wait, 5)
        await asyncio.sleep(0.3)
        assert not task.done()  # the answer is there; its body waits for the slot
        slots.release()
        read = await asyncio.wait_for(task, 5)
    assert base64.b64decode(read.images["probe"]) == JPEG
    assert not slots.locked()


async def test_an_error_answer_gives_its_body_slot_back(server):
    """The caller may back off for long after an error answer: it holds no body."""

    def handler(sock: socket.socket, head: bytes) -> None:
        _answer(sock, b'{"error": {"code": "maintenance"}}', status="503 Service Unavailable")

    slots = asyncio.Semaphore(1)
    slot = BodySlot(slots)
    async with IdPassClient(server(handler), "tok") as api:
        with pytest.raises(ApiServerError):
            await api.details(PID, body_slot=slot)
    assert not slot.held
    assert not slots.locked()


async def test_more_requests_than_connections_and_slots_all_finish(server):
    """Responses waiting for a body slot hold connections; a request waiting for a
    connection must not take the thread that would read a body (a deadlock)."""

    def handler(sock: socket.socket, head: bytes) -> None:
        _answer(sock, json.dumps(_doc({"probe": B64})).encode())

    slots = asyncio.Semaphore(1)
    async with IdPassClient(server(handler), "tok", max_connections=2) as api:
        tasks = [_with_slot(slots, lambda slot: api.details(PID, body_slot=slot)) for _ in range(8)]
        reads = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert [r.details.id for r in reads] == [PID] * 8


async def test_cancelled_while_waiting_for_a_slot_frees_the_connection(server):
    answered = threading.Event()
    served: list[int] = []

    def handler(sock: socket.socket, head: bytes) -> None:
        served.append(sock.fileno())
        _answer(sock, json.dumps(_doc({"probe": B64})).encode())
        answered.set()

    slots = asyncio.Semaphore(1)
    async with IdPassClient(server(handler), "tok", max_connections=1) as api:
        await slots.acquire()
        waiting = _with_slot(slots, lambda slot: api.details(PID, body_slot=slot))
        assert await asyncio.to_thread(answered.wait, 5)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        slots.release()
        # the only connection: its unread body was dropped with it, so the next
        # request gets a clean connection instead of waiting forever for one
        read = await asyncio.wait_for(
            _with_slot(slots, lambda slot: api.details(PID, body_slot=slot)), 5
        )
    assert read.details.id == PID
    assert len(served) == 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"a": 1, "images": {"p": "QUJD"}}', {"a": 1, "images": {"p": b"QUJD"}}),
        (b'{"images": {"p": "QU\\/D"}}', {"images": {"p": "QU/D"}}),
        # an escape elsewhere in the body: slot by slot, copied out or JSON-decoded
        (
            b'{"name": "a\\"b", "images": {"p": "QUJD", "q": "QU\\/D"}}',
            {"name": 'a"b', "images": {"p": b"QUJD", "q": "QU/D"}},
        ),
        (b'{"images": {"p": null, "q": 5}}', {"images": {"p": None, "q": 5}}),
        (b'{"images": null}', {"images": None}),
        (b'{"images": "oops"}', {"images": "oops"}),
        (b"[1, 2]", [1, 2]),
        # an envelope: the pass (and its images) inside "data"
        (
            b'{"data": {"id": "x", "images": {"p": "QUJD"}}}',
            {"data": {"id": "x", "images": {"p": b"QUJD"}}},
        ),
        # not an envelope: a record field called "data" is left as JSON
        (
            b'{"id": "x", "data": {"images": {"p": "QUJD"}}}',
            {"id": "x", "data": {"images": {"p": "QUJD"}}},
        ),
    ],
)
def test_load_json_leaves_base64_undecoded(body, expected):
    assert load_json(body) == expected  # a memoryview equals the bytes it shows


def test_load_json_images_are_views_of_the_body():
    """No escape in the body: each image is a zero-copy view of the body's bytes."""
    body = b'{"id": "x", "images": {"p": "QUJD", "q": "RUZH"}}'
    images = load_json(body)["images"]
    assert all(isinstance(v, memoryview) for v in images.values())
    assert [bytes(v) for v in images.values()] == [b"QUJD", b"RUZH"]
    assert decode_base64(images["q"], max_bytes=10) == b"EFG"
