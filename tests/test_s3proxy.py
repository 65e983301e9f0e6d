"""The fault-injecting S3 proxy of the fault tests (tests/fixtures/s3proxy.py), on its
own: faithful forwarding (framing, HEAD, keep-alive, Host, SigV4) and each fault."""

from __future__ import annotations

import hashlib
import http.client
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore import exceptions as bex
from botocore.config import Config

from archiver.config import StorageSettings
from archiver.errors import StoreUnavailable
from archiver.sandbox.seaweedfs import SeaweedFS
from archiver.store.s3 import S3Store
from tests.fixtures.s3proxy import Decision, S3FaultProxy

# --- against a tiny echo server: HTTP framing ---------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers with what it received; ``/chunked`` answers with a chunked body."""

    protocol_version = "HTTP/1.1"
    connections: set[tuple[str, int]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.connections.add(self.client_address)
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().strip(), 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        digest = hashlib.sha256(body).hexdigest()
        reply = f"{self.command} {self.path} host={self.headers['Host']} sha={digest}".encode()
        self.send_response(200)
        self.send_header("X-Seen-Expect", self.headers.get("Expect", "-"))
        if self.path == "/chunked":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (reply[:10], reply[10:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)

    do_PUT = do_HEAD = do_POST = do_GET


@pytest.fixture
def echo() -> Iterator[tuple[str, set[tuple[str, int]]]]:
    seen: set[tuple[str, int]] = set()
    handler = type("Echo", (_Echo,), {"connections": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def test_framing_host_head_and_keep_alive(echo) -> None:
    """Bodies by Content-Length and chunked reach upstream intact, a chunked answer is
    relayed, HEAD has headers only, Host is unchanged, 100-continue is answered, and
    several requests share one connection on each side."""
    url, upstream_conns = echo
    body = os.urandom(70_000)
    sha = hashlib.sha256(body).hexdigest()
    with S3FaultProxy(url) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        try:
            conn.request("PUT", "/b/k?x=1", body=body, headers={"Host": "signed.example:9"})
            r = conn.getresponse()
            assert r.read() == f"PUT /b/k?x=1 host=signed.example:9 sha={sha}".encode()

            conn.request("PUT", "/b/chunks", body=iter([body[:5000], body[5000:]]))
            r = conn.getresponse()  # http.client sent it chunked (an iterable body)
            assert r.read().endswith(f"sha={sha}".encode())

            conn.request("GET", "/chunked")
            r = conn.getresponse()
            assert r.getheader("Transfer-Encoding") is None
            assert r.read().startswith(b"GET /chunked host=127.0.0.1:")

            conn.request("HEAD", "/b/k")
            r = conn.getresponse()
            assert int(r.getheader("Content-Length")) > 0 and r.read() == b""

            conn.putrequest("PUT", "/b/expect")
            conn.putheader("Content-Length", str(len(body)))
            conn.putheader("Expect", "100-continue")
            conn.endheaders()
            conn.send(body)
            r = conn.getresponse()
            assert r.status == 200 and r.read().endswith(f"sha={sha}".encode())
            assert r.getheader("X-Seen-Expect") == "-"  # answered by the proxy
        finally:
            conn.close()
        assert proxy.stats.to_json() == {
            "requests": 5,
            "forwarded": 5,
            "faulted": 0,
            "faults": {},
            "upstream_errors": {},
        }
    assert len(upstream_conns) == 1  # one keep-alive connection upstream for all five


def test_decisions_are_seeded_and_follow_the_rate() -> None:
    """The same seed gives the same decisions; the faulted share follows the rate and
    every kind, before and after forwarding, occurs."""
    a = S3FaultProxy("http://127.0.0.1:9", rate=0.25, seed=42)
    b = S3FaultProxy("http://127.0.0.1:9", rate=0.25, seed=42)
    first = [a.decide() for _ in range(2000)]
    assert first == [b.decide() for _ in range(2000)]
    c = S3FaultProxy("http://127.0.0.1:9", rate=0.25, seed=43)
    assert first != [c.decide() for _ in range(2000)]
    faulted = [d for d in first if d.kind is not None]
    assert 420 <= len(faulted) <= 580  # 25 % of 2000, within about 4 standard deviations
    assert a.stats.faulted == len(faulted)
    assert {(d.kind, d.after_forward) for d in faulted} >= {
        (k, after) for k in ("reset", "stall") for after in (False, True)
    }
    assert {d.kind for d in faulted} == {"slowdown", "internal", "reset", "stall"}


# --- in front of SeaweedFS -------------------------------------------------------------


def _client(seaweedfs: SeaweedFS, endpoint: str, **config: Any) -> Any:
    access, secret = seaweedfs.credentials
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=access,
        aws_secret_access_key=secret,
        config=Config(s3={"addressing_style": "path"}, **config),
    )


def test_s3_requests_pass_through_with_valid_signatures(
    s3_proxy: S3FaultProxy, seaweedfs: SeaweedFS, s3_bucket: str
) -> None:
    """Signed for the proxy's address, boto3's requests verify upstream: put (also a
    large one with Expect: 100-continue), conditional put, head, get, list, delete."""
    client = _client(seaweedfs, s3_proxy.endpoint_url)
    big = os.urandom(3 * 1024 * 1024 + 5)
    for key, body in (("p/small", b"hello"), ("p/big", big)):
        client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    with pytest.raises(bex.ClientError) as info:
        client.put_object(Bucket=s3_bucket, Key="p/small", Body=b"other", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.head_object(Bucket=s3_bucket, Key="p/big")["ContentLength"] == len(big)
    assert client.get_object(Bucket=s3_bucket, Key="p/big")["Body"].read() == big
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="p/")["Contents"]]
    assert keys == ["p/big", "p/small"]
    client.delete_object(Bucket=s3_bucket, Key="p/small")
    direct = seaweedfs.client()
    assert direct.get_object(Bucket=s3_bucket, Key="p/big")["Body"].read() == big
    assert s3_proxy.stats.faulted == 0 and s3_proxy.stats.forwarded == s3_proxy.stats.requests


PUT_CLIENTS = ["crt", "botocore"]


def _store(
    seaweedfs: SeaweedFS,
    bucket: str,
    endpoint: str,
    attempts: int,
    put_client: str = "crt",
    read_timeout: float = 0.5,
) -> S3Store:
    settings = StorageSettings(
        put_client=put_client,
        bucket=bucket,
        prefix="test",
        endpoint_url=endpoint,
        region="us-east-1",
        sse="aws:kms",
        kms_key_id="archive-key",
        connect_timeout_seconds=2.0,
        read_timeout_seconds=read_timeout,
    )
    return S3Store(settings, credentials=seaweedfs.credentials, max_attempts=attempts)


@pytest.mark.parametrize("put_client", PUT_CLIENTS)
@pytest.mark.parametrize(
    ("kind", "after", "what"),
    [
        # botocore's words; the CRT reports 5xx and throttling by its own error names
        ("slowdown", False, {"botocore": "SlowDown (HTTP 503)", "crt": "SlowDown (AWS_"}),
        ("internal", False, {"botocore": "InternalError (HTTP 500)", "crt": "5xx server error"}),
        ("reset", False, {"botocore": "ConnectionClosedError", "crt": "ConnectionClosedError"}),
        ("stall", False, {"botocore": "ReadTimeoutError", "crt": "ReadTimeoutError"}),
        ("reset", True, {"botocore": "ConnectionClosedError", "crt": "ConnectionClosedError"}),
    ],
)
def test_each_fault_reaches_the_store_as_unavailable(
    s3_proxy: S3FaultProxy,
    seaweedfs: SeaweedFS,
    s3_bucket: str,
    kind: str,
    after: bool,
    what: dict[str, str],
    put_client: str,
) -> None:
    """With no retries, each injected fault surfaces as StoreUnavailable (retryable);
    a stall lasts until the client's read timeout, not longer."""
    s3_proxy.configure(stall_seconds=2.0)
    # Only the stall is about the read timeout. The others get a longer one: a reset
    # after forwarding waits for SeaweedFS's answer, and its first write into a fresh
    # bucket took over 0.5 s on a busy machine (the CRT then timed out first).
    read_timeout = 0.5 if kind == "stall" else 5.0
    store = _store(seaweedfs, s3_bucket, s3_proxy.endpoint_url, 1, put_client, read_timeout)
    s3_proxy.script(Decision(kind, after_forward=after))
    began = time.monotonic()
    with store, pytest.raises(StoreUnavailable) as info:
        store.put("test/k", b"data", sha256=hashlib.sha256(b"data").hexdigest(), content_type="x")
    assert what[put_client] in str(info.value) and info.value.retryable
    if kind == "stall":
        assert time.monotonic() - began < 1.9  # cut at the read timeout, not the stall
    assert s3_proxy.stats.faults == {kind: 1}
    written = seaweedfs.versions_per_key(s3_bucket).get("test/k", 0)
    assert written == (1 if after else 0)


@pytest.mark.parametrize("put_client", PUT_CLIENTS)
@pytest.mark.parametrize("kind", ["reset", "stall"])
def test_a_put_whose_answer_was_lost_is_retried_into_the_same_object(
    s3_proxy: S3FaultProxy, seaweedfs: SeaweedFS, s3_bucket: str, kind: str, put_client: str
) -> None:
    """SeaweedFS stores the object but the answer is lost; the client retries (or, for
    a stall the CRT gives up on, the store's caller would), the conditional put is
    refused (412) and the store reuses the object: one version."""
    s3_proxy.configure(stall_seconds=2.0)
    store = _store(seaweedfs, s3_bucket, s3_proxy.endpoint_url, 3, put_client)
    s3_proxy.script(Decision(kind, after_forward=True))
    data = os.urandom(2048)
    with store:
        res = store.put("test/k", data, sha256=hashlib.sha256(data).hexdigest(), content_type="x")
        assert res.reused and store.get("test/k") == data
    assert seaweedfs.versions_per_key(s3_bucket) == {"test/k": 1}


@pytest.mark.parametrize("put_client", PUT_CLIENTS)
def test_a_faulty_stretch_is_ridden_out_by_retries(
    s3_proxy: S3FaultProxy, seaweedfs: SeaweedFS, s3_bucket: str, put_client: str
) -> None:
    """At a 25 % fault rate (stalls short), 20 puts with botocore's retries all land,
    once each, and read back intact directly from SeaweedFS."""
    s3_proxy.configure(rate=0.25, seed=7, stall_seconds=0.8)
    store = _store(seaweedfs, s3_bucket, s3_proxy.endpoint_url, 8, put_client)
    blobs = {f"test/{i:02d}": os.urandom(1000 + i) for i in range(20)}
    with store:
        for key, data in blobs.items():
            store.put(key, data, sha256=hashlib.sha256(data).hexdigest(), content_type="x")
    assert s3_proxy.stats.faulted >= 3
    assert seaweedfs.versions_per_key(s3_bucket) == dict.fromkeys(sorted(blobs), 1)
    direct = seaweedfs.client()
    for key, data in blobs.items():
        assert direct.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == data
