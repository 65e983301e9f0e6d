"""No single API answer can hurt the job: the transport's bounds on size, encoding and
time, against a hostile loopback server (a threaded one, written here), through the
client and through a real ``idpass-archiver run`` (with the real sandbox, SeaweedFS and
catalog for the baseline it is compared with).

The hostile answers: a gzip bomb (1 MB expanding to 1 GiB, sent with
``Content-Encoding: gzip``, with and without ``Content-Length``), bodies over the cap
(declared, chunked and close-delimited), and a body or headers trickled one byte every
0.25 s, which a 1 s read timeout alone never stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import ssl
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from archiver.errors import (
    ApiAuthError,
    ApiServerError,
    RequestDeadlineExceeded,
    ResponseTooLarge,
    UnrequestedContentEncoding,
)
from archiver.idpass.client import IdPassClient
from archiver.idpass.transport import BodySlot, Urllib3Transport
from tests.benchmarks.procmem import MemorySampler
from tests.fixtures.cli import cli_env, run_cli

PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"
TRICKLE_SECONDS = 0.25
BOMB_BYTES = 1 << 30  # what the bomb expands to

Behaviour = Callable[[socket.socket, bytes], None]


def _doc(pass_id: str = PID) -> bytes:
    return json.dumps(
        {
            "id": pass_id,
            "status": "complete",
            "verification_status": "passed",
            "config": {"image_retention_days": 30, "link_validity_days": 7},
            "created_at": "2026-01-01T00:00:00Z",
            "completed_at": "2026-01-01T00:10:00Z",
            "images": {},
        }
    ).encode()


def _gzip_bomb() -> bytes:
    """A details body whose one image is 1 GiB of ``A``, gzipped: about 1 MB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    parts = [z.compress(b'{"id": "' + PID.encode() + b'", "images": {"probe": "')]
    block = b"A" * (1 << 20)
    parts += [z.compress(block) for _ in range(BOMB_BYTES // len(block))]
    parts.append(z.compress(b'"}}') + z.flush())
    return b"".join(parts)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = _gzip_bomb()
    assert 0.9e6 < len(data) < 1.2e6  # ~1 MB on the wire for 1 GiB decoded
    return data


def _read_request(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
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


class HostileServer:
    """A threaded HTTP/1.1 server on loopback that answers every request by calling
    ``behaviour(sock, request_head)``; it counts connections and bytes sent."""

    def __init__(self, behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self._tls = tls
        self.connections = 0
        self.heads: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self._tls is not None:
                conn = self._tls.wrap_socket(conn, server_side=True)
            while head := _read_request(conn):
                self.heads.append(head)
                self.behaviour(conn, head)
        except OSError:
            pass  # the client cut the connection: that is the point
        finally:
            conn.close()

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def hostile() -> Iterator[Callable[..., HostileServer]]:
    """``hostile(behaviour, tls=None)`` → a started :class:`HostileServer`."""
    servers: list[HostileServer] = []

    def start(behaviour: Behaviour, tls: ssl.SSLContext | None = None) -> HostileServer:
        servers.append(HostileServer(behaviour, tls))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# --- what the hostile server sends ------------------------------------------------


def _head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _chunked(sock: socket.socket, pieces: Iterator[bytes]) -> None:
    for piece in pieces:
        sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
    sock.sendall(b"0\r\n\r\n")


def _endless(piece: bytes = b" " * 65536) -> Iterator[bytes]:
    while True:
        yield piece


def bomb_with_length(data: bytes) -> Behaviour:
    def send(sock: socket.socket, head: bytes) -> None:
        sock.sendall(_head(Content_Encoding="gzip", Content_Length=str(len(data))) + data)

    return send


def bomb_chunked(data: bytes) -> Behaviour:
    def send(sock: socket.socket, head: bytes) -> None:
        sock.sendall(_head(Content_Encoding="gzip", Transfer_Encoding="chunked"))
        _chunked(sock, iter(data[i : i + 65536] for i in range(0, len(data), 65536)))

    return send


def trickle_body(sock: socket.socket, head: bytes) -> None:
    body = _doc()
    sock.sendall(_head(Content_Length=str(len(body))))
    for byte in body:
        sock.sendall(bytes([byte]))
        time.sleep(TRICKLE_SECONDS)


def trickle_headers(sock: socket.socket, head: bytes) -> None:
    for byte in _head(Content_Length="2") + b"{}":
        sock.sendall(bytes([byte]))
        time.sleep(TRICKLE_SECONDS)


def plain(sock: socket.socket, head: bytes) -> None:
    body = _doc()
    sock.sendall(_head(Content_Length=str(len(body))) + body)


# --- through the client -------------------------------------------------------------


def _client(url: str, **kw: Any) -> IdPassClient:
    return IdPassClient(url, "tok", **kw)


@pytest.mark.parametrize("send", [bomb_with_length, bomb_chunked])
async def test_a_gzip_bomb_is_refused_unread(hostile, bomb, send):
    server = hostile(send(bomb))
    async with _client(server.url, max_connections=1) as api:
        started = time.monotonic()
        with pytest.raises(UnrequestedContentEncoding) as info:
            await api.details(PID)
        assert time.monotonic() - started < 5
        # the connection, with the bomb unread on it, was closed: a new one serves
        # the next request (the pool has room for one)
        server.behaviour = plain
        again = await asyncio.wait_for(api.details(PID), 10)
    assert again.details.id == PID
    assert server.connections == 2
    assert info.value.reason == "unrequested_content_encoding"
    assert info.value.retryable  # a proxy's misconfiguration may be fixed
    assert b"accept-encoding: identity" in server.heads[0].lower().split(b"\r\n")


async def test_a_declared_body_over_the_cap_is_refused_before_it_is_read(hostile):
    def huge(sock: socket.socket, head: bytes) -> None:
        sock.sendall(_head(Content_Length=str(10**10)))
        time.sleep(30)  # nothing more comes: reading would wait for the read timeout

    server = hostile(huge)
    async with _client(server.url, read_timeout=20, max_response_bytes=1 << 20) as api:
        started = time.monotonic()
        with pytest.raises(ResponseTooLarge) as info:
            await api.details(PID)
    assert time.monotonic() - started < 5
    assert info.value.reason == "response_too_large"
    assert not info.value.retryable
    assert "10000000000" not in str(info.value)  # no header value in the message
    assert "(1048576 bytes)" in str(info.value)


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
async def test_an_undeclared_body_over_the_cap_is_cut_at_the_cap(hostile, framing):
    sent = [0]

    def endless(sock: socket.socket, head: bytes) -> None:
        if framing == "chunked":
            sock.sendall(_head(Transfer_Encoding="chunked"))
            pieces = _endless()
            for piece in pieces:
                sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                sent[0] += len(piece)
        else:
            sock.sendall(_head(Connection="close"))
            while True:
                sock.sendall(b" " * 65536)
                sent[0] += 65536

    server = hostile(endless)
    cap = 1 << 20
    async with _client(server.url, max_response_bytes=cap) as api:
        with pytest.raises(ResponseTooLarge):
            await api.details(PID)
    time.sleep(0.5)
    # the server was stopped once its socket buffers filled after the cap
    assert sent[0] < cap + 16 * (1 << 20)
    stopped = sent[0]
    time.sleep(0.5)
    assert sent[0] == stopped


@pytest.mark.parametrize("framing", ["chunked", "close-delimited", "content-length"])
async def test_a_body_of_exactly_the_cap_is_accepted_one_more_byte_is_not(hostile, framing):
    cap = 300_000
    exact = _doc() + b" " * (cap - len(_doc()))
    bodies = [exact, exact + b" "]

    def send(sock: socket.socket, head: bytes) -> None:
        body = bodies[len(server.heads) - 1]
        if framing == "chunked":
            sock.sendall(_head(Transfer_Encoding="chunked"))
            _chunked(sock, iter([body[:100_000], body[100_000:]]))
        elif framing == "close-delimited":
            sock.sendall(_head(Connection="close") + body)
            sock.shutdown(socket.SHUT_WR)
        else:
            sock.sendall(_head(Content_Length=str(len(body))) + body)

    server = hostile(send)
    async with _client(server.url, max_response_bytes=cap) as api:
        read = await api.details(PID)
        assert read.response_bytes == cap
        with pytest.raises(ResponseTooLarge):
            await api.details(PID)


@pytest.mark.parametrize("slot", [False, True], ids=["no-slot", "body-slot"])
async def test_a_trickling_body_is_cut_at_the_deadline(hostile, slot):
    server = hostile(trickle_body)
    slots = asyncio.Semaphore(1)
    async with _client(server.url, read_timeout=1, request_deadline=2, max_connections=1) as api:
        started = time.monotonic()
        with pytest.raises(RequestDeadlineExceeded) as info:
            await api.details(PID, body_slot=BodySlot(slots) if slot else None)
        took = time.monotonic() - started
        # the cut connection went out of the pool (max 1): a new one serves the next
        server.behaviour = plain
        again = await asyncio.wait_for(api.details(PID), 10)
    assert 2 <= took < 4
    assert again.details.id == PID
    assert server.connections == 2
    assert info.value.reason == "request_deadline_exceeded"
    assert info.value.retryable
    assert not slots.locked()  # the body slot was given back


def _tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a throwaway self-signed certificate for 127.0.0.1, and a
    client context that trusts it (and only it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pem)
    return server, ssl.create_default_context(cafile=pem)


async def test_a_trickling_tls_body_is_cut_at_the_deadline(hostile, tmp_path):
    """Over TLS too (the API is https): the cut ends a read blocked inside SSL."""
    server_tls, client_tls = _tls_contexts(tmp_path)
    server = hostile(trickle_body, tls=server_tls)
    transport = Urllib3Transport(
        max_connections=1,
        connect_timeout=5,
        read_timeout=1,
        deadline=2,
        max_response_bytes=1 << 20,
        verify=client_tls,  # certificates verified, against the throwaway one
    )
    async with IdPassClient(server.url, "tok", transport=transport) as api:
        started = time.monotonic()
        with pytest.raises(RequestDeadlineExceeded):
            await api.details(PID)
        took = time.monotonic() - started
        server.behaviour = plain
        again = await asyncio.wait_for(api.details(PID), 10)
    assert 2 <= took < 4
    assert again.details.id == PID
    assert server.connections == 2


async def test_trickling_headers_are_cut_at_the_deadline(hostile):
    server = hostile(trickle_headers)
    async with _client(server.url, read_timeout=1, request_deadline=1.5) as api:
        started = time.monotonic()
        with pytest.raises(RequestDeadlineExceeded):
            await api.details(PID)
    assert 1.5 <= time.monotonic() - started < 3.5


async def test_waiting_for_a_body_slot_does_not_count_against_the_deadline(hostile):
    server = hostile(plain)
    slots = asyncio.Semaphore(1)
    await slots.acquire()  # held by another pass for longer than the deadline
    async with _client(server.url, read_timeout=0.5, request_deadline=0.5) as api:
        read = asyncio.create_task(api.details(PID, body_slot=BodySlot(slots)))
        await asyncio.sleep(1.5)
        slots.release()
        done = await asyncio.wait_for(read, 5)
    assert done.details.id == PID


@pytest.mark.parametrize(
    ("status", "error"),
    [("401 Unauthorized", ApiAuthError), ("503 Busy", ApiServerError)],
    ids=["401", "503"],
)
@pytest.mark.parametrize("kind", ["gzip", "huge"])
async def test_an_error_answer_keeps_its_status_whatever_its_body(hostile, status, error, kind):
    """A compressed or oversized error page is dropped unread: the status decides
    (a 401 must still stop the run)."""

    def send(sock: socket.socket, head: bytes) -> None:
        if kind == "gzip":
            body = zlib.compress(b'{"error": {"code": "x"}}')
            sock.sendall(_head(status, Content_Encoding="gzip", Content_Length=str(len(body))))
            sock.sendall(body)
        else:
            sock.sendall(_head(status, Content_Length=str(10**9)))
            time.sleep(5)

    server = hostile(send)
    async with _client(server.url, read_timeout=20) as api:
        started = time.monotonic()
        with pytest.raises(error) as info:
            await api.details(PID)
    assert time.monotonic() - started < 3
    assert "non_json_body" in str(info.value)


async def test_messages_carry_no_header_value(hostile):
    marker = "x-secret-4711"

    def send(sock: socket.socket, head: bytes) -> None:
        sock.sendall(_head(Content_Encoding=marker, Content_Length="2") + b"{}")

    server = hostile(send)
    async with _client(server.url) as api:
        with pytest.raises(UnrequestedContentEncoding) as info:
            await api.details(PID)
    assert marker not in str(info.value)


# --- through a real run --------------------------------------------------------------


def _run_measured(cfg: Path, env: dict[str, str]) -> tuple[dict, float]:
    """``idpass-archiver run --json`` in a subprocess: its summary, and its peak RSS in
    MB (VmHWM, sampled from outside: see tests/benchmarks/procmem.py)."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run", "--json", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(env),
    )
    sampler = MemorySampler(proc.pid, time.perf_counter(), interval=0.02).start()
    out, err = proc.communicate(timeout=180)
    sampler.join()
    assert "Traceback" not in err.decode(), err.decode()[-2000:]
    return json.loads(out), sampler.peak_mb


def _import_ids(cfg: Path, env: dict[str, str], ids: list[str]) -> None:
    ledger = cfg.parent / f"ledger-{uuid.uuid4().hex[:6]}.jsonl"
    ledger.write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
    imported = run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert imported.returncode == 0, imported.stderr[-2000:]


def _hostile_config(cfg: Path, url: str, extra: str = "") -> Path:
    """The same config (bucket, catalog), its [api] pointed at the hostile server."""
    text = cfg.read_text()
    start = text.index("base_url = ")
    end = text.index("\n", start)
    out = cfg.with_name(f"hostile-{uuid.uuid4().hex[:6]}.toml")
    out.write_text(text[:start] + f'base_url = "{url}"\nmax_attempts = 1{extra}' + text[end:])
    return out


def _reasons(summary: dict) -> set[str]:
    return {f["reason"].split(":", 1)[0] for f in summary["failed"]}


def test_a_run_survives_a_gzip_bomb_an_oversize_answer_and_a_trickle(
    cli_config, sandbox_http, hostile, bomb
):
    """Baseline: a normal run archives 2 sandbox passes. Then a run against the bomb
    (with and without Content-Length) ends each pass with
    ``unrequested_content_encoding`` and a peak RSS within twice the baseline's (the
    old client decoded the 1 GiB, peaking at 4.2 GB against a 99 MB baseline); a run
    against an answer over the cap fails its pass with ``response_too_large``; a run
    against the trickle ends its pass with ``request_deadline_exceeded`` at the
    deadline."""
    cfg, env = cli_config
    passes = sandbox_http.post(
        "/_sandbox/passes",
        json={"count": 2, "image_retention_days": 30, "slots": ["probe", "id_photo"]},
    ).json()["passes"]
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    assert (
        run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env).returncode == 0
    )
    normal, normal_mb = _run_measured(cfg, env)
    assert normal["counts"]["archived"] == len(passes), normal

    for send in (bomb_with_length, bomb_chunked):
        server = hostile(send(bomb))
        ids = [str(uuid.uuid4()) for _ in range(2)]
        _import_ids(cfg, env, ids)
        summary, peak_mb = _run_measured(_hostile_config(cfg, server.url), env)
        assert peak_mb < 2 * normal_mb, (peak_mb, normal_mb)
        assert summary["counts"]["archived"] == 0, summary
        assert {f["pass_id"] for f in summary["failed"]} == set(ids)
        assert _reasons(summary) == {"unrequested_content_encoding"}, summary["failed"]

    def oversize(sock: socket.socket, head: bytes) -> None:
        sock.sendall(_head(Transfer_Encoding="chunked"))
        _chunked(sock, iter([_doc() + b" " * 200_000]))

    server = hostile(oversize)
    [big] = ids = [str(uuid.uuid4())]
    _import_ids(cfg, env, ids)
    cap = "\nmax_response_bytes = 65536"
    summary, _ = _run_measured(_hostile_config(cfg, server.url, cap), env)
    assert [f["pass_id"] for f in summary["failed"]] == [big]
    assert _reasons(summary) == {"response_too_large"}, summary["failed"]
    assert summary["counts"]["failed"] == 1  # not retried: the same answer would come

    server = hostile(trickle_body)
    [slow] = ids = [str(uuid.uuid4())]
    _import_ids(cfg, env, ids)
    deadline = "\nread_timeout_seconds = 1\nrequest_deadline_seconds = 3"
    started = time.monotonic()
    summary, _ = _run_measured(_hostile_config(cfg, server.url, deadline), env)
    assert time.monotonic() - started < 30  # the trickle alone would take > 60 s
    assert [f["pass_id"] for f in summary["failed"]] == [slow]
    assert _reasons(summary) == {"request_deadline_exceeded"}, summary["failed"]
    assert summary["counts"]["retry"] == 1
