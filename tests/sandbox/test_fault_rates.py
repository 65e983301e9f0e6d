"""Random, seeded faults in the sandbox (``/_sandbox/fault-rates``, ``--fault-rates``),
over real HTTP: each kind as the archiver's client meets it, reproducibility, and
that the counted faults of ``/_sandbox/faults`` keep working beside them."""

from __future__ import annotations

import base64
import binascii
import socket
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from archiver.core.images import check_image, decode_base64
from archiver.errors import (
    ApiMalformedResponse,
    ApiRateLimited,
    ApiServerError,
    ApiTransportError,
    ImageDecodeError,
)
from archiver.idpass.client import IdPassClient
from archiver.sandbox import SandboxServer

DETAILS = "/idpass/details"


def _create(http: httpx.Client, count: int = 1) -> list[dict[str, Any]]:
    r = http.post(
        "/_sandbox/passes",
        json={"count": count, "image_retention_days": 30, "slots": ["probe", "id_photo"]},
    )
    assert r.status_code == 201, r.text
    passes: list[dict[str, Any]] = r.json()["passes"]
    return passes


def _rates(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/_sandbox/fault-rates", json=body)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _details(http: httpx.Client, p: dict[str, Any]) -> httpx.Response:
    return http.post(
        DETAILS, json={"id": p["id"], "cipher_key": p["cipher_key"], "return_images": True}
    )


def _first_image(r: httpx.Response) -> str:
    images = r.json()["images"]
    text: str = next(v for v in images.values() if v)
    return text


def test_rates_are_set_read_and_cleared_by_the_admin_route(sandbox_http: httpx.Client) -> None:
    """POST sets the rates (and answers them back), GET counts calls and faults per
    kind, DELETE and /_sandbox/reset stop them."""
    [p] = _create(sandbox_http)
    doc = _rates(sandbox_http, rates={"503": 1.0}, seed=3, retry_after=2)
    assert doc["fault_rates"] == {
        "rates": {"503": 1.0},
        "seed": 3,
        "latency_seconds": [1.0, 1.0],
        "retry_after": 2.0,
        "paths": None,
        "skew_days": 31.0,
    }
    assert (doc["calls"], doc["faulted"]) == (0, 0)
    for _ in range(3):
        assert _details(sandbox_http, p).status_code == 503
    got = sandbox_http.get("/_sandbox/fault-rates").json()
    assert (got["calls"], got["faulted"], got["injected"]) == (3, 3, {"503": 3})
    assert sandbox_http.delete("/_sandbox/fault-rates").json()["fault_rates"] is None
    assert _details(sandbox_http, p).status_code == 200
    _rates(sandbox_http, rates={"500": 1.0})
    sandbox_http.post("/_sandbox/reset")
    assert sandbox_http.get("/_sandbox/fault-rates").json()["fault_rates"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "rates"),
        ({"rates": {"418": 0.1}}, "rates"),
        ({"rates": {"503": 1.5}}, "503"),
        ({"rates": {"503": 0.6, "500": 0.6}}, "add up"),
        ({"rates": {"503": 0.1}, "seed": "x"}, "seed"),
        ({"rates": {"latency": 0.1}, "latency_seconds": [2, 1]}, "latency_seconds"),
        ({"rates": {"503": 0.1}, "paths": ["/_sandbox/passes"]}, "paths"),
    ],
)
def test_bad_rates_are_refused(
    sandbox_http: httpx.Client, body: dict[str, Any], field: str
) -> None:
    """Unknown kinds, probabilities out of range or adding up past 1, and admin paths
    are refused with a 400 naming the field."""
    r = sandbox_http.post("/_sandbox/fault-rates", json=body)
    assert r.status_code == 400
    assert field in r.json()["error"]["message"]


def test_each_status_kind(sandbox_http: httpx.Client) -> None:
    """429 carries Retry-After; 500 and 503 are the API's JSON error bodies."""
    [p] = _create(sandbox_http)
    _rates(sandbox_http, rates={"429": 1.0}, retry_after=0.5)
    r = _details(sandbox_http, p)
    assert (r.status_code, r.headers["Retry-After"]) == (429, "0.5")
    assert r.json()["error"]["code"] == "rate_limited"
    for status in ("500", "503"):
        _rates(sandbox_http, rates={status: 1.0})
        r = _details(sandbox_http, p)
        assert r.status_code == int(status) and r.json()["error"]["code"] == "injected_fault"


def test_latency_is_drawn_from_its_range(sandbox_http: httpx.Client) -> None:
    """A latency fault sleeps within latency_seconds, then answers normally."""
    [p] = _create(sandbox_http)
    _rates(sandbox_http, rates={"latency": 1.0}, latency_seconds=[0.3, 0.4])
    began = time.monotonic()
    r = _details(sandbox_http, p)
    assert r.status_code == 200 and r.json()["id"] == p["id"]
    assert 0.3 <= time.monotonic() - began < 3


def test_drop_closes_the_connection_mid_body(sandbox: SandboxServer, sandbox_http) -> None:
    """A drop sends the headers with the full Content-Length and part of the body, then
    the server really closes the socket: the client reads a short body and EOF."""
    [p] = _create(sandbox_http)
    _rates(sandbox_http, rates={"drop": 1.0})
    with pytest.raises(httpx.RemoteProtocolError):
        _details(sandbox_http, p)

    body = orjson.dumps({"id": p["id"], "cipher_key": p["cipher_key"], "return_images": True})
    url = urlsplit(sandbox.base_url)
    request = (
        f"POST {DETAILS} HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {sandbox.token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):  # b"" once the server has closed
            received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert 0 < len(rest) < length


def test_image_faults_spoil_the_first_image(sandbox_http: httpx.Client) -> None:
    """invalid_base64, truncated_base64 and not_jpeg each fail the archiver's image
    check with the reason the README's bad-input table gives."""
    [p] = _create(sandbox_http)
    reasons = {}
    for kind in ("invalid_base64", "truncated_base64", "not_jpeg"):
        _rates(sandbox_http, rates={kind: 1.0})
        r = _details(sandbox_http, p)
        assert r.status_code == 200
        text = _first_image(r)
        with pytest.raises(ImageDecodeError) as info:
            check_image("probe", decode_base64(text, max_bytes=20_000_000))
        reasons[kind] = info.value.message
    assert reasons["invalid_base64"] == "image is not valid Base64"
    assert reasons["truncated_base64"] == "image is not valid Base64"
    assert reasons["not_jpeg"] == "image has no JPEG start marker (PNG)"
    with pytest.raises(binascii.Error):
        base64.b64decode(_first_image(_details_with(sandbox_http, p, "truncated_base64")))


def _details_with(http: httpx.Client, p: dict[str, Any], kind: str) -> httpx.Response:
    _rates(http, rates={kind: 1.0})
    return _details(http, p)


def test_response_faults(sandbox_http: httpx.Client) -> None:
    """wrong_content_type keeps the JSON but says text/plain; html_error is a 502 HTML
    page; invalid_json is a 200 application/json body that does not parse."""
    [p] = _create(sandbox_http)
    r = _details_with(sandbox_http, p, "wrong_content_type")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert orjson.loads(r.content)["id"] == p["id"]
    r = _details_with(sandbox_http, p, "html_error")
    assert r.status_code == 502 and r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<!DOCTYPE html>")
    r = _details_with(sandbox_http, p, "invalid_json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.content)


@pytest.mark.parametrize(
    ("kind", "error", "reason"),
    [
        ("429", ApiRateLimited, "HTTP 429 (rate_limited)"),
        ("500", ApiServerError, "HTTP 500 (injected_fault)"),
        ("503", ApiServerError, "HTTP 503 (injected_fault)"),
        ("drop", ApiTransportError, "transport failure"),
        ("wrong_content_type", ApiMalformedResponse, "expected JSON"),
        ("html_error", ApiServerError, "HTTP 502 (non_json_body)"),
        ("invalid_json", ApiMalformedResponse, "body is not valid JSON"),
    ],
)
async def test_the_archivers_client_sees_each_kind_as_a_retryable_error(
    sandbox: SandboxServer, sandbox_http: httpx.Client, kind: str, error: type, reason: str
) -> None:
    """Every transport and protocol kind reaches the client as the retryable error
    the README's troubleshooting table names."""
    [p] = _create(sandbox_http)
    _rates(sandbox_http, rates={kind: 1.0}, retry_after=0.25)
    async with IdPassClient(sandbox.base_url, sandbox.token, read_timeout=10) as client:
        with pytest.raises(error) as info:
            await client.details(p["id"], p["cipher_key"])
    assert info.value.retryable and reason in str(info.value)
    if kind == "429":
        assert isinstance(info.value, ApiRateLimited) and info.value.retry_after == 0.25


def _outcomes(http: httpx.Client, p: dict[str, Any], n: int) -> list[int]:
    return [_details(http, p).status_code for _ in range(n)]


def test_draws_are_seeded_and_follow_the_rates(sandbox_http: httpx.Client) -> None:
    """The same seed gives the same sequence of faults; the share of faulted calls
    follows the rates; another seed gives another sequence."""
    [p] = _create(sandbox_http)
    rates = {"500": 0.15, "503": 0.15}
    _rates(sandbox_http, rates=rates, seed=11, paths=[DETAILS])
    first = _outcomes(sandbox_http, p, 200)
    stats = sandbox_http.get("/_sandbox/fault-rates").json()
    _rates(sandbox_http, rates=rates, seed=11, paths=[DETAILS])
    assert _outcomes(sandbox_http, p, 200) == first
    _rates(sandbox_http, rates=rates, seed=12, paths=[DETAILS])
    assert _outcomes(sandbox_http, p, 200) != first
    faulted = sum(1 for s in first if s != 200)
    assert stats["faulted"] == faulted and stats["calls"] == 200
    assert 35 <= faulted <= 85  # 30 % of 200, within about 4 standard deviations
    assert set(first) == {200, 500, 503}


def test_paths_limit_the_rates_and_counted_faults_come_first(sandbox_http: httpx.Client) -> None:
    """With paths set, other routes are untouched; a counted fault matching a call is
    used before any draw, and the new kinds work as counted faults too."""
    [p] = _create(sandbox_http)
    _rates(sandbox_http, rates={"503": 1.0}, paths=[DETAILS])
    r = sandbox_http.post("/idpass/register", json={})
    assert r.status_code == 200, r.text
    sandbox_http.post("/_sandbox/faults", json={"kind": "status", "status": 404, "count": 1})
    assert _details(sandbox_http, p).status_code == 404  # the counted one
    assert _details(sandbox_http, p).status_code == 503  # then the rates again
    sandbox_http.delete("/_sandbox/fault-rates")
    sandbox_http.post("/_sandbox/faults", json={"kind": "not_jpeg", "count": 1})
    r = _details(sandbox_http, p)
    assert base64.b64decode(_first_image(r)).startswith(b"\x89PNG")
    assert _details(sandbox_http, p).status_code == 200


def test_sandbox_process_takes_fault_rates_on_its_command_line() -> None:
    """``python -m archiver.sandbox --fault-rates JSON`` serves with those rates
    (seeded by --seed unless the JSON has a seed); bad JSON is a usage error."""
    rates = '{"rates": {"503": 1.0}, "paths": ["/idpass/details"]}'
    cmd = [sys.executable, "-m", "archiver.sandbox", "--token", "tok-fault", "--seed", "5"]
    with subprocess.Popen(
        [*cmd, "--fault-rates", rates], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            url = orjson.loads(proc.stdout.readline())["url"]
            headers = {"Authorization": "Bearer tok-fault"}
            with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
                doc = http.get("/_sandbox/fault-rates").json()
                assert doc["fault_rates"]["rates"] == {"503": 1.0}
                assert doc["fault_rates"]["seed"] == 5
                [p] = _create(http)
                assert _details(http, p).status_code == 503
        finally:
            proc.terminate()
            proc.communicate(timeout=20)
    assert proc.returncode == 0
    bad = subprocess.run(
        [*cmd, "--fault-rates", '{"rates": {"503": 2}}'],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2 and "--fault-rates" in bad.stderr
