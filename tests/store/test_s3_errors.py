"""S3Store's translation of S3 answers, from answers the test writes.

boto3's requests never leave the process: a ``before-send`` handler on the store's
boto3 client (botocore's own hook for answering a request) plays the server, the way
``httpx.MockTransport`` does for httpx. Puts are tested both ways the store can send
them (``storage.put_client``): through boto3, answered by that hook, and through the
AWS CRT, which speaks HTTP itself, so a loopback server hands its requests to the same
handler and writes the answers it returns. CRT puts are tested both from a thread
(``put``) and from an event loop (``put_async``, as the pipeline sends them).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore import exceptions as bex
from botocore.awsrequest import AWSPreparedRequest, AWSResponse, HeadersDict, HTTPHeaders

from archiver.config import StorageSettings
from archiver.errors import (
    EncryptionRefused,
    ObjectConflict,
    ObjectNotFound,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
)
from archiver.store.s3 import S3Store

KEY = "test/passes/p1/images/front.jpg"
DATA = b"\xff\xd8 image \xff\xd9"
SHA = hashlib.sha256(DATA).hexdigest()
B64 = base64.b64encode(hashlib.sha256(DATA).digest()).decode()
SECRET_TEXT = "body text that must never reach a message"

Handler = Callable[[AWSPreparedRequest], AWSResponse]


class _Raw(io.BytesIO):
    """The urllib3-response-like object botocore reads bodies from."""

    def stream(self, amt: int = 1024, decode_content: bool = True) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


def answer(status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> AWSResponse:
    fields = HTTPHeaders()
    for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
        fields[name] = value
    return AWSResponse("http://s3.test", status, fields, _Raw(body))


def error(status: int, code: str) -> AWSResponse:
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>{SECRET_TEXT}</Message></Error>"
    ).encode()
    return answer(status, {"Content-Type": "application/xml"}, body)


def header(request: AWSPreparedRequest, name: str) -> str:
    value = request.headers[name]
    return value.decode() if isinstance(value, bytes) else str(value)


def stored(**extra: str) -> dict[str, str]:
    """Headers of an object holding DATA, encrypted with KMS, with its checksum."""
    return {
        "Content-Length": str(len(DATA)),
        "Content-Type": "image/jpeg",
        "Last-Modified": "Wed, 25 Nov 2026 20:15:16 GMT",
        "x-amz-checksum-sha256": B64,
        "x-amz-server-side-encryption": "aws:kms",
        "x-amz-server-side-encryption-aws-kms-key-id": "archive-key",
        "x-amz-version-id": "v1",
        **extra,
    }


class _Loopback(ThreadingHTTPServer):
    """Answers the CRT's requests with ``handle(request)``: an AWSResponse is written
    back; an exception closes the connection unanswered."""

    daemon_threads = True

    def __init__(self, handle: Callable[[AWSPreparedRequest], AWSResponse]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_PUT(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = AWSPreparedRequest(
                    "PUT",
                    f"http://{self.headers['Host']}{self.path}",
                    HeadersDict(dict(self.headers.items())),
                    body,
                    False,
                )
                try:
                    response = outer.handle(request)
                except Exception:
                    self.close_connection = True
                    return
                payload = response.raw.read()
                self.send_response(response.status_code)
                for name, value in response.headers.items():
                    if name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        super().__init__(("127.0.0.1", 0), Handler)
        self.handle = handle
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


async def _offload(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(params=["botocore", "crt", "crt-async"])
def served(request: pytest.FixtureRequest) -> Iterator[Callable[..., tuple[S3Store, list[Any]]]]:
    stores: list[S3Store] = []
    servers: list[_Loopback] = []
    put_client = "crt" if request.param == "crt-async" else request.param

    def make(
        *answers: AWSResponse | Exception | Handler, **settings_: Any
    ) -> tuple[S3Store, list[Any]]:
        queue, seen = list(answers), []

        def handler(request: AWSPreparedRequest, **_: Any) -> AWSResponse:
            seen.append(request)
            item = queue.pop(0)
            if isinstance(item, Exception):
                raise item
            return item(request) if callable(item) else item

        endpoint = "http://s3.test"
        if put_client == "crt":
            servers.append(_Loopback(handler))
            endpoint = servers[-1].url
        settings = StorageSettings(
            bucket="unit-bucket",
            endpoint_url=endpoint,
            kms_key_id="archive-key",
            put_client=put_client,
            **settings_,
        )
        store = S3Store(settings, credentials=("key", "secret"), max_attempts=1)
        stores.append(store)
        events = store._client.meta.events  # the test seam: botocore's own send hook
        events.register("before-send.s3", handler)  # type: ignore[arg-type]
        return store, seen

    def put(store: S3Store, *args: Any, **kwargs: Any) -> Any:
        """The store's put, or put_async on an event loop of its own."""
        if request.param != "crt-async":
            return store.put(*args, **kwargs)
        return asyncio.run(store.put_async(*args, offload=_offload, **kwargs))

    make.put_client = put_client  # type: ignore[attr-defined]
    make.put = put  # type: ignore[attr-defined]
    yield make
    for store in stores:
        store.close()
    for server in servers:
        server.shutdown()
        server.server_close()


def test_put_sends_our_checksum_a_condition_and_the_encryption(served: Any) -> None:
    """A put carries the base64 SHA-256 we computed, If-None-Match: * and SSE-KMS with its key."""
    store, seen = served(answer(200, stored()))

    result = served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")

    headers = {name.lower(): header(seen[0], name) for name in seen[0].headers}
    assert seen[0].method == "PUT"
    assert headers["x-amz-checksum-sha256"] == B64
    assert headers["if-none-match"] == "*"
    assert headers["x-amz-server-side-encryption"] == "aws:kms"
    assert headers["x-amz-server-side-encryption-aws-kms-key-id"] == "archive-key"
    assert (result.version_id, result.reused, result.sha256) == ("v1", False, SHA)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-amz-server-side-encryption": "AES256"},
    ],
    ids=["none", "other-algorithm"],
)
def test_a_put_the_server_reports_unencrypted_is_refused(
    served: Any, headers: dict[str, str]
) -> None:
    """A put answered without the requested encryption raises EncryptionRefused."""
    store, _ = served(answer(200, headers))

    with pytest.raises(EncryptionRefused) as caught:
        served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")

    assert caught.value.key == KEY and caught.value.systemic


@pytest.mark.parametrize(
    ("status", "code"), [(412, "PreconditionFailed"), (409, "ConditionalRequestConflict")]
)
def test_an_existing_object_answer_leads_to_reuse(served: Any, status: int, code: str) -> None:
    """412 and 409 on a conditional put are answered by a HEAD: same SHA-256 means reuse."""
    store, seen = served(error(status, code), answer(200, stored()))

    result = served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")

    assert [r.method for r in seen] == ["PUT", "HEAD"]
    assert header(seen[1], "x-amz-checksum-mode") == "ENABLED"
    assert (result.reused, result.version_id) == (True, "v1")


def test_a_composite_checksum_is_not_trusted_and_the_bytes_are_read(served: Any) -> None:
    """A multipart (composite) checksum is no SHA-256 of the object: the bytes decide."""
    composite = stored(**{"x-amz-checksum-sha256": B64 + "-3", "x-amz-checksum-type": "COMPOSITE"})
    store, seen = served(
        error(412, "PreconditionFailed"),
        answer(200, composite),
        answer(200, {"Content-Length": "5", "x-amz-version-id": "v1"}, b"other"),
    )

    with pytest.raises(ObjectConflict) as caught:
        served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")

    assert [r.method for r in seen] == ["PUT", "HEAD", "GET"]
    assert seen[2].url.endswith("versionId=v1")
    assert caught.value.existing_sha256 == hashlib.sha256(b"other").hexdigest()


def test_head_decodes_the_stored_object(served: Any) -> None:
    """head turns S3's headers into ObjectInfo: hex SHA-256, encryption, lock, UTC times."""
    lock = {
        "x-amz-object-lock-mode": "COMPLIANCE",
        "x-amz-object-lock-retain-until-date": "2033-11-25T20:15:16Z",
    }
    store, _ = served(answer(200, stored(**lock)))

    info = store.head(KEY)

    assert info is not None
    assert (info.sha256, info.size, info.version_id) == (SHA, len(DATA), "v1")
    assert (info.encryption, info.kms_key_id) == ("aws:kms", "archive-key")
    assert info.lock_mode == "COMPLIANCE"
    assert info.retain_until is not None and info.retain_until.isoformat() == (
        "2033-11-25T20:15:16+00:00"
    )


@pytest.mark.parametrize(
    ("body", "detected_by"),
    [(DATA[::-1], "FlexibleChecksumError"), (DATA[:5], "IncompleteReadError")],
    ids=["other-bytes", "truncated"],
)
def test_get_verifies_the_bytes_it_reads(served: Any, body: bytes, detected_by: str) -> None:
    """Bytes that do not match S3's checksum or length raise StoreUnavailable, not data."""
    store, _ = served(answer(200, stored(), body))  # Content-Length still says len(DATA)

    with pytest.raises(StoreUnavailable, match=detected_by):
        store.get(KEY)


def test_get_returns_bytes_that_match(served: Any) -> None:
    """A body matching its checksum comes back whole."""
    store, seen = served(answer(200, stored(), DATA))

    assert store.get(KEY, version_id="v1") == DATA
    assert seen[0].url.endswith("versionId=v1")
    assert header(seen[0], "x-amz-checksum-mode") == "ENABLED"


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (403, "AccessDenied", StoreAccessDenied),
        (403, "InvalidAccessKeyId", StoreAccessDenied),
        (403, "SignatureDoesNotMatch", StoreAccessDenied),
        (400, "ExpiredToken", StoreAccessDenied),
        (403, "SomethingNew", StoreAccessDenied),
        (404, "NoSuchBucket", StoreAccessDenied),
        (503, "SlowDown", StoreUnavailable),
        (500, "InternalError", StoreUnavailable),
        (502, "BadGateway", StoreUnavailable),
        (400, "RequestTimeout", StoreUnavailable),
        (400, "BadDigest", StoreUnavailable),
        (400, "InvalidArgument", StoreError),
        (400, "KMS.NotFoundException", StoreError),
    ],
)
def test_s3_error_codes_map_onto_the_store_errors(
    served: Any, status: int, code: str, expected: type[StoreError]
) -> None:
    """Each S3 error code becomes its StoreError, naming key and code but never the body."""
    store, _ = served(error(status, code))

    with pytest.raises(StoreError) as caught:
        served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")

    assert type(caught.value) is expected
    assert caught.value.key == KEY
    message = str(caught.value)
    if served.put_client == "crt" and expected is StoreUnavailable:
        # 5xx, throttling and RequestTimeout are retried inside the CRT, which then
        # reports its own error name, without the status or the body
        assert KEY in message and (code in message or "(AWS_ERROR_S3_" in message)
    else:
        assert KEY in message and code in message
    assert SECRET_TEXT not in message


@pytest.mark.parametrize("served", ["botocore"], indirect=True)  # GET is botocore's alone
@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "NoSuchKey", ObjectNotFound),
        (404, "NoSuchVersion", ObjectNotFound),
        (404, "NoSuchBucket", StoreAccessDenied),
        (403, "AccessDenied", StoreAccessDenied),
        (403, "SignatureDoesNotMatch", StoreAccessDenied),
        (403, "InvalidAccessKeyId", StoreAccessDenied),
        (503, "SlowDown", StoreUnavailable),
        (500, "InternalError", StoreUnavailable),
        (400, "InvalidArgument", StoreError),
        (405, "MethodNotAllowed", StoreError),
    ],
)
def test_only_no_such_key_or_version_is_object_not_found_on_get(
    served: Any, status: int, code: str, expected: type[StoreError]
) -> None:
    """get raises ObjectNotFound only when S3 says the key or version is not there; a
    refusal, a missing bucket or a server error stays what it is."""
    store, _ = served(error(status, code))

    with pytest.raises(StoreError) as caught:
        store.get(KEY, version_id="v1")

    assert type(caught.value) is expected
    assert caught.value.key == KEY and code in str(caught.value)
    assert SECRET_TEXT not in str(caught.value)


def test_a_bodyless_403_on_head_is_access_denied(served: Any) -> None:
    """HEAD answers have no body: a bare 403 is still StoreAccessDenied."""
    store, _ = served(answer(403))

    with pytest.raises(StoreAccessDenied, match="HTTP 403"):
        store.head(KEY)


@pytest.mark.parametrize(
    "failure",
    [
        bex.EndpointConnectionError(endpoint_url="http://s3.test"),
        bex.ConnectTimeoutError(endpoint_url="http://s3.test"),
        bex.ReadTimeoutError(endpoint_url="http://s3.test"),
        bex.ConnectionClosedError(endpoint_url="http://s3.test"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_transport_failures_are_unavailable(served: Any, failure: Exception) -> None:
    """Refused, timed-out and dropped connections become the retryable StoreUnavailable."""
    store, _ = served(failure)

    with pytest.raises(StoreUnavailable) as caught:
        store.head(KEY)

    assert caught.value.retryable and type(failure).__name__ in str(caught.value)
    assert isinstance(caught.value.__cause__, bex.BotoCoreError)


@pytest.mark.parametrize(
    "failure",
    [bex.ConnectionClosedError(endpoint_url="http://s3.test")],
    ids=lambda exc: type(exc).__name__,
)
def test_a_put_whose_connection_drops_is_unavailable(served: Any, failure: Exception) -> None:
    """A put answered by a closed connection raises the retryable StoreUnavailable."""
    store, _ = served(failure)

    with pytest.raises(StoreUnavailable) as caught:
        served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")

    assert caught.value.retryable and "ConnectionClosedError" in str(caught.value)


@pytest.mark.parametrize("served", ["crt", "crt-async"], indirect=True)
def test_a_put_never_answered_times_out(served: Any) -> None:
    """A server that takes the body and never answers: StoreUnavailable after the read
    timeout, not a hang. (Only the CRT put meets a real socket here; botocore's read
    timeout is tested through the S3 fault proxy, tests/test_s3proxy.py.)"""

    def stall(request: AWSPreparedRequest) -> AWSResponse:
        time.sleep(4)
        return answer(200, stored())

    store, _ = served(stall, read_timeout_seconds=1.0)

    began = time.monotonic()
    with pytest.raises(StoreUnavailable, match="ReadTimeoutError"):
        served.put(store, KEY, DATA, sha256=SHA, content_type="image/jpeg")
    assert time.monotonic() - began < 3.5


def test_half_the_credentials_is_access_denied_when_the_store_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An access key without its secret fails as the store is made (botocore resolves
    credentials then): StoreAccessDenied naming botocore's error, no secret shown."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "an-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "")
    settings = StorageSettings(
        bucket="unit-bucket", endpoint_url="http://s3.test", kms_key_id="archive-key"
    )

    with pytest.raises(StoreAccessDenied, match="PartialCredentialsError") as caught:
        S3Store(settings)

    assert caught.value.systemic and "an-access-key" not in str(caught.value)
