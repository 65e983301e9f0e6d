"""The transient faults real upstream answers show, and the wire variants the sandbox
serves on request, over real HTTP: ``null_slot``, ``empty_images``, ``clock_skew``,
``cut_body``, ``error_envelope`` (counted and random), ``/_sandbox/options`` and the
``Date`` header on every answer."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from archiver.idpass import crypto
from archiver.sandbox import SandboxServer

DETAILS = "/idpass/details"
SLOTS = ["probe", "document_1_front", "document_1_photo", "id_photo"]


def _create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/_sandbox/passes", json={"image_retention_days": 30, "slots": SLOTS, **body})
    assert r.status_code == 201, r.text
    passes: list[dict[str, Any]] = r.json()["passes"]
    return passes[0]


def _fault(http: httpx.Client, **body: Any) -> None:
    r = http.post("/_sandbox/faults", json=body)
    assert r.status_code == 200, r.text


def _read(http: httpx.Client, p: dict[str, Any], *, key: bool = True) -> httpx.Response:
    body = {"id": p["id"], "return_images": True}
    if key:
        body["cipher_key"] = p["cipher_key"]
    return http.post(DETAILS, json=body)


def _images(http: httpx.Client, p: dict[str, Any]) -> dict[str, Any]:
    r = _read(http, p)
    assert r.status_code == 200, r.text
    images: dict[str, Any] = r.json()["images"]
    return images


def _truth(http: httpx.Client, p: dict[str, Any], slot: str) -> bytes:
    r = http.get(f"/_sandbox/passes/{p['id']}/images/{slot}")
    assert r.status_code == 200
    return r.content


def _held(images: dict[str, Any]) -> set[str]:
    return {s for s, v in images.items() if isinstance(v, str) and v}


def _date(r: httpx.Response) -> datetime:
    return parsedate_to_datetime(r.headers["date"])


# --- null_slot -------------------------------------------------------------------------


def test_null_slot_answers_null_for_the_named_slots_once(sandbox_http: httpx.Client) -> None:
    p = _create(sandbox_http)
    _fault(sandbox_http, kind="null_slot", slots=["probe", "id_photo"])
    images = _images(sandbox_http, p)
    assert images["probe"] is None and images["id_photo"] is None
    assert _held(images) == {"document_1_front", "document_1_photo"}
    assert _held(_images(sandbox_http, p)) == set(SLOTS)  # the next read is whole


def test_null_slot_draws_one_or_more_held_slots_reproducibly(sandbox_http: httpx.Client) -> None:
    p = _create(sandbox_http)
    nulled = []
    for seed in (1, 1, 2, 3, 4, 5):
        _fault(sandbox_http, kind="null_slot", seed=seed)
        images = _images(sandbox_http, p)
        gone = {s for s in SLOTS if images.get(s, "") is None}
        assert gone and gone <= set(SLOTS) and _held(images) == set(SLOTS) - gone
        nulled.append(gone)
    assert nulled[0] == nulled[1]
    assert len({frozenset(g) for g in nulled}) > 1


def test_null_slot_in_an_encrypted_answer(sandbox_http: httpx.Client) -> None:
    """The slot is null in local mode too; the other images still decrypt."""
    p = _create(sandbox_http)
    _fault(sandbox_http, kind="null_slot", slots=["document_1_front"])
    doc = _read(sandbox_http, p, key=False).json()
    assert crypto.is_encrypted(doc)
    assert doc["images"]["document_1_front"] is None
    key = crypto.parse_key(p["cipher_key"])
    assert crypto.decrypt_value(key, doc["images"]["probe"]) == _truth(sandbox_http, p, "probe")


# --- empty_images and clock_skew ---------------------------------------------------------


def test_empty_images_inside_the_window(sandbox_http: httpx.Client) -> None:
    p = _create(sandbox_http)
    _fault(sandbox_http, kind="empty_images", pass_id=p["id"])
    r = _read(sandbox_http, p)
    assert r.status_code == 200 and r.json()["images"] == {}
    assert r.json()["status"] == "complete"
    assert _held(_images(sandbox_http, p)) == set(SLOTS)


def test_clock_skew_closes_an_open_window_and_dates_the_answer_ahead(
    sandbox_http: httpx.Client,
) -> None:
    """Completed 5 days ago with 30 days' retention: open by the real clock, closed by
    a clock 31 days ahead, and the answer's Date says so."""
    now = datetime.now(UTC)
    p = _create(sandbox_http, completed_at=(now - timedelta(days=5)).isoformat())
    _fault(sandbox_http, kind="clock_skew")
    r = _read(sandbox_http, p)
    assert r.status_code == 200 and r.json()["images"] == {}
    skew = _date(r) - now
    assert timedelta(days=31) - timedelta(seconds=30) < skew < timedelta(days=31, seconds=30)
    again = _read(sandbox_http, p)
    assert _held(again.json()["images"]) == set(SLOTS)
    assert abs(_date(again) - now) < timedelta(seconds=30)


def test_clock_skew_days_are_configurable(sandbox_http: httpx.Client) -> None:
    """3 days ahead: closes a window with 2 days left, not one with 20 left."""
    now = datetime.now(UTC)
    near = _create(sandbox_http, completed_at=(now - timedelta(days=28)).isoformat())
    far = _create(sandbox_http, completed_at=(now - timedelta(days=10)).isoformat())
    _fault(sandbox_http, kind="clock_skew", days=3, count=2)
    assert _images(sandbox_http, near) == {}
    r = _read(sandbox_http, far)
    assert _held(r.json()["images"]) == set(SLOTS)
    assert (
        timedelta(days=3) - timedelta(seconds=30) < _date(r) - now < timedelta(days=3, seconds=30)
    )


# --- cut_body and error_envelope ---------------------------------------------------------


def _raw_details(sandbox: SandboxServer, p: dict[str, Any]) -> tuple[bytes, bytes]:
    """One details read over a bare socket: (head, the body bytes that arrived)."""
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
    return head, rest


def test_cut_body_stops_mid_image_under_a_full_content_length(
    sandbox: SandboxServer, sandbox_http: httpx.Client
) -> None:
    p = _create(sandbox_http)
    whole = _read(sandbox_http, p).content
    _fault(sandbox_http, kind="cut_body")
    head, rest = _raw_details(sandbox, p)
    assert head.startswith(b"HTTP/1.1 200")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert int(headers[b"content-length"]) == len(whole)
    assert b"date" in headers
    assert 0 < len(rest) < len(whole) and whole.startswith(rest)
    first = _images(sandbox_http, p)["probe"].encode()
    start = whole.index(first)
    assert start < len(rest) < start + len(first)  # the cut falls inside the first image
    _fault(sandbox_http, kind="cut_body")
    with pytest.raises(httpx.RemoteProtocolError):
        _read(sandbox_http, p)


def test_error_envelope_is_a_200_carrying_an_error(sandbox_http: httpx.Client) -> None:
    p = _create(sandbox_http)
    _fault(sandbox_http, kind="error_envelope")
    r = _read(sandbox_http, p)
    assert r.status_code == 200
    assert r.json() == {"error": {"code": "internal", "message": "an internal error occurred"}}
    assert _held(_images(sandbox_http, p)) == set(SLOTS)


# --- the same kinds drawn at random -------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["null_slot", "empty_images", "clock_skew", "cut_body", "error_envelope"]
)
def test_each_new_kind_can_be_drawn(sandbox_http: httpx.Client, kind: str) -> None:
    p = _create(sandbox_http)
    r = sandbox_http.post(
        "/_sandbox/fault-rates", json={"rates": {kind: 1.0}, "seed": 4, "skew_days": 40}
    )
    assert r.status_code == 200, r.text
    assert r.json()["fault_rates"]["skew_days"] == 40
    if kind == "cut_body":
        with pytest.raises(httpx.RemoteProtocolError):
            _read(sandbox_http, p)
    else:
        doc = _read(sandbox_http, p).json()
        if kind == "null_slot":
            assert set(SLOTS) - _held(doc["images"])
        elif kind == "error_envelope":
            assert doc["error"]["code"] == "internal"
        else:
            assert doc["images"] == {}
    got = sandbox_http.get("/_sandbox/fault-rates").json()
    assert got["injected"] == {kind: 1}


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "clock_skew", "days": "31"},
        {"kind": "null_slot", "slots": ["selfie"]},
        {"kind": "null_slot", "seed": True},
    ],
)
def test_bad_new_faults_are_refused(sandbox_http: httpx.Client, body: dict[str, Any]) -> None:
    r = sandbox_http.post("/_sandbox/faults", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "invalid_field"


# --- wire variants -----------------------------------------------------------------------


def _options(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/_sandbox/options", json=body)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def test_options_default_and_reset(sandbox: SandboxServer, sandbox_http: httpx.Client) -> None:
    assert sandbox_http.get("/_sandbox/options").json() == {
        "image_form": "map",
        "missing_slots": "mixed",
    }
    assert _options(sandbox_http, image_form="image_list")["image_form"] == "image_list"
    assert _options(sandbox_http, missing_slots="null") == {
        "image_form": "image_list",
        "missing_slots": "null",
    }
    assert sandbox_http.post("/_sandbox/options", json={"image_form": "xml"}).status_code == 400
    sandbox_http.post("/_sandbox/reset")
    assert sandbox_http.get("/_sandbox/options").json()["image_form"] == "map"


def test_data_uri_images(sandbox_http: httpx.Client) -> None:
    p = _create(sandbox_http, slots=["probe", "id_photo"])
    _options(sandbox_http, image_form="data_uri", missing_slots="absent")
    images = _images(sandbox_http, p)
    assert set(images) == {"probe", "id_photo"}
    prefix = "data:image/jpeg;base64,"
    for slot, value in images.items():
        assert value.startswith(prefix)
        assert base64.b64decode(value[len(prefix) :]) == _truth(sandbox_http, p, slot)


def test_image_list_images_in_both_modes(sandbox_http: httpx.Client) -> None:
    p = _create(sandbox_http, slots=["probe", "id_photo"])
    _options(sandbox_http, image_form="image_list", missing_slots="null")
    r = _read(sandbox_http, p)
    items = r.json()["images"]
    assert isinstance(items, list) and len(items) == 12
    by_slot = {item["slot"]: item["data"] for item in items}
    assert base64.b64decode(by_slot["probe"]) == _truth(sandbox_http, p, "probe")
    assert {s for s, v in by_slot.items() if v is None} == set(by_slot) - {"probe", "id_photo"}
    sealed = _read(sandbox_http, p, key=False).json()
    assert crypto.is_encrypted(sealed)
    token = next(i["data"] for i in sealed["images"] if i["slot"] == "id_photo")
    key = crypto.parse_key(p["cipher_key"])
    assert crypto.decrypt_value(key, token) == _truth(sandbox_http, p, "id_photo")


@pytest.mark.parametrize("form", ["absent", "null"])
def test_missing_slots_answered_one_way(sandbox_http: httpx.Client, form: str) -> None:
    _options(sandbox_http, missing_slots=form)
    for _ in range(3):
        images = _images(sandbox_http, _create(sandbox_http, slots=["probe"]))
        assert images["probe"]
        assert len(images) == (1 if form == "absent" else 12)


# --- the Date header ---------------------------------------------------------------------


def test_every_answer_carries_the_sandbox_clock_as_date(
    sandbox: SandboxServer, sandbox_http: httpx.Client
) -> None:
    p = _create(sandbox_http)
    now = datetime.now(UTC)
    answers = [
        _read(sandbox_http, p),
        sandbox_http.get("/_sandbox/clock"),
        sandbox_http.post(DETAILS, json={"id": "not-a-uuid"}),
        httpx.get(f"{sandbox.base_url}/_sandbox/clock"),  # 401
    ]
    for r in answers:
        assert len(r.headers.get_list("date")) == 1, r.headers
        assert abs(_date(r) - now) < timedelta(seconds=30)
    sandbox_http.post("/_sandbox/clock", json={"advance_seconds": 86_400})
    assert timedelta(hours=23) < _date(_read(sandbox_http, p)) - now < timedelta(hours=25)


def test_the_sandbox_process_takes_the_wire_options() -> None:
    cmd = [sys.executable, "-m", "archiver.sandbox", "--token", "tok-opt"]
    with subprocess.Popen(
        [*cmd, "--image-form", "data_uri", "--missing-slots", "null"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = orjson.loads(proc.stdout.readline())["url"]
            headers = {"Authorization": "Bearer tok-opt"}
            with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
                assert http.get("/_sandbox/options").json() == {
                    "image_form": "data_uri",
                    "missing_slots": "null",
                }
        finally:
            proc.terminate()
            proc.communicate(timeout=20)
    assert proc.returncode == 0
    bad = subprocess.run(
        [*cmd, "--image-form", "xml"], capture_output=True, text=True, timeout=30, check=False
    )
    assert bad.returncode == 2 and "--image-form" in bad.stderr
