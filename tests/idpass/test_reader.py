"""How the client reads a details answer it does not expect: API text never copied
into a message, slot names matched whole, slots and record bounded, wire variants
accepted, the API's clock measured."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import structlog

from archiver.clock import ManualClock
from archiver.core.images import decode_base64, valid_slot_name
from archiver.errors import (
    ApiAuthError,
    ApiBadRequest,
    ApiError,
    ApiMalformedResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiServerError,
    ArchiverError,
    ImageDecodeError,
    RecordTooLarge,
    TooManySlots,
    safe_token,
)
from archiver.idpass.client import IdPassClient, load_json
from archiver.idpass.models import MAX_RECORD_BYTES, MAX_SLOTS, SLOTS
from tests.helpers import make_jpeg

PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"
JPEG = make_jpeg()
B64 = base64.b64encode(JPEG).decode()
PERSON = "Quillon Marrowby 1987-02-11"
ESCAPES = ("\x1b[31m", "\x1b]0;x\x07")
HOSTILE = [PERSON, *ESCAPES, f"{ESCAPES[0]}{PERSON}{ESCAPES[1]}", "x" * 1968, "probe\n"]
# what a message may be made of: our words, numbers, and safe tokens
MESSAGE = re.compile(r"[A-Za-z0-9_ /:;,.()'{}\-]{1,200}")


def _doc(**over):
    doc = {
        "id": PID,
        "status": "complete",
        "verification_status": "passed",
        "config": {"image_retention_days": 30, "link_validity_days": 7},
        "created_at": "2026-01-01T00:00:00Z",
        "completed_at": "2026-01-01T00:10:00Z",
        "images": {"probe": B64},
    }
    doc.update(over)
    return doc


def _client(handler, **kwargs):
    return IdPassClient("http://api.test", "t", transport=httpx.MockTransport(handler), **kwargs)


async def _details(answer: httpx.Response, **kwargs):
    async with _client(lambda r: answer, **kwargs) as api:
        return await api.details(PID)


async def _error(answer: httpx.Response, **kwargs) -> ArchiverError:
    with pytest.raises(ArchiverError) as info:
        await _details(answer, **kwargs)
    return info.value


def _clean(exc: ArchiverError) -> str:
    """The reason the pipeline would record; fails if API text got into it."""
    reason = f"{exc.reason}: {exc}"
    assert MESSAGE.fullmatch(reason), repr(reason)
    for bad in (
        PERSON,
        "Quillon",
        "1987",
        "\x1b",
        "\x07",
        "\n",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    ):
        assert bad not in reason
    return reason


# --- the sanitiser --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "out"),
    [
        ("pass_not_found", "pass_not_found"),
        ("a" * 32, "a" * 32),
        ("a" * 33, "unrecognised"),
        ("Pass_Not_Found", "unrecognised"),
        ("probe\n", "unrecognised"),
        ("", "unrecognised"),
        (None, "unrecognised"),
        (404, "unrecognised"),
        *((h, "unrecognised") for h in HOSTILE),
    ],
)
def test_safe_token_lets_only_short_snake_case_through(value, out):
    assert safe_token(value) == out


# --- API text in messages ----------------------------------------------------------


@pytest.mark.parametrize("code", HOSTILE)
@pytest.mark.parametrize("status", [400, 404, 409, 418, 429, 500, 503])
async def test_an_error_code_reaches_no_message_unless_a_safe_token(code, status):
    """The API's error code is shown as a safe token: a name, a date of birth, an
    escape sequence or 2 KB of it never reach the reason (it did, 64 characters of it)."""
    body = {"error": {"code": code, "message": f"no pass for {PERSON}"}}
    exc = await _error(httpx.Response(status, json=body))
    assert isinstance(exc, ApiError) and exc.status_code == status
    assert f"HTTP {status} (unrecognised)" in _clean(exc)


async def test_a_safe_error_code_is_still_shown():
    exc = await _error(httpx.Response(404, json={"error": {"code": "pass_not_found"}}))
    assert str(exc) == "/idpass/details: HTTP 404 (pass_not_found)"


@pytest.mark.parametrize("body", [f"<h1>{PERSON}</h1>\x1b[31m", ""])
async def test_an_error_body_that_is_not_json_is_not_repeated(body):
    exc = await _error(httpx.Response(502, text=body))
    assert "(non_json_body)" in _clean(exc)


@pytest.mark.parametrize("ctype", [f"text/html; {PERSON}", f"text/{ESCAPES[1]}plain", "x" * 500])
async def test_the_content_type_is_never_echoed(ctype):
    """A 200 answer that is not JSON says so; its Content-Type value is not quoted."""
    answer = httpx.Response(
        200, content=json.dumps(_doc()).encode(), headers={"content-type": ctype}
    )
    exc = await _error(answer)
    assert isinstance(exc, ApiMalformedResponse)
    assert _clean(exc).endswith("expected JSON, got another content type")


@pytest.mark.parametrize("slot", HOSTILE)
async def test_an_unsafe_slot_name_is_refused_and_not_repeated(slot):
    """Any slot name that is not a safe key segment refuses the pass, null or not,
    and the name stays out of the reason (it was quoted, 40 characters of it)."""
    for value in (B64, None, 5):
        exc = await _error(httpx.Response(200, json=_doc(images={"probe": B64, slot: value})))
        assert isinstance(exc, ImageDecodeError)
        assert "not a safe key segment" in _clean(exc)


@pytest.mark.parametrize(
    "change",
    [
        {"status": PERSON},
        {"status": ESCAPES[0]},
        {"completed_at": PERSON},
        {"config": {"image_retention_days": PERSON}},
        {"id": PERSON},
        {"images": PERSON},
    ],
)
async def test_shape_errors_carry_no_api_text(change):
    exc = await _error(httpx.Response(200, json=_doc(**change)))
    assert isinstance(exc, ApiMalformedResponse)
    _clean(exc)


async def test_a_verification_status_that_is_not_a_token_is_not_kept():
    """The typed view (which the manifest records) keeps a token, never prose; the
    record keeps what the API wrote."""
    read = await _details(httpx.Response(200, json=_doc(verification_status=PERSON)))
    assert read.details.verification_status == "unrecognised"
    assert read.record["verification_status"] == PERSON
    read = await _details(httpx.Response(200, json=_doc(verification_status="passed")))
    assert read.details.verification_status == "passed"


# --- slot names ----------------------------------------------------------------------


@pytest.mark.parametrize("slot", ["probe\n", "probe\r\n", "\nprobe", "probe ", "a" * 65, ""])
def test_slot_names_are_matched_whole(slot):
    """ "probe\\n" was accepted (``$`` matches before a final newline) and stored as
    images/probe\\n.jpg, which breaks SHA256SUMS."""
    assert not valid_slot_name(slot)


@pytest.mark.parametrize("slot", [*SLOTS, "selfie_extra", "a" * 64, "0"])
def test_known_and_plain_slot_names_are_accepted(slot):
    assert valid_slot_name(slot)


async def test_a_slot_name_with_a_trailing_newline_refuses_the_pass():
    exc = await _error(httpx.Response(200, json=_doc(images={"probe\n": B64})))
    assert isinstance(exc, ImageDecodeError) and not exc.retryable


# --- bounds ---------------------------------------------------------------------------


async def test_more_slots_than_allowed_refuse_the_pass():
    """500 slots (null ones count) were archived as 500 objects: now refused."""
    many = {f"slot_{n}": (B64 if n % 2 else None) for n in range(500)}
    exc = await _error(httpx.Response(200, json=_doc(images=many)))
    assert isinstance(exc, TooManySlots) and exc.reason == "too_many_slots"
    assert not exc.retryable
    assert _clean(exc) == (
        f"too_many_slots: /idpass/details: 500 image slots, more than the {MAX_SLOTS} accepted"
    )


async def test_the_slot_bound_counts_list_entries_and_can_be_set():
    at_limit = {f"s{n}": None for n in range(MAX_SLOTS)}
    read = await _details(httpx.Response(200, json=_doc(images=at_limit)))
    assert len(read.null_slots) == MAX_SLOTS
    entries = [{"slot": s, "data": B64} for s in ("probe", "id_photo", "document_1_front")]
    exc = await _error(httpx.Response(200, json=_doc(images=entries)), max_slots=2)
    assert isinstance(exc, TooManySlots)


async def test_a_record_larger_than_allowed_refuses_the_pass():
    """A 50 MiB extra field was archived whole: now the record is refused, by its raw
    size, before the field is decoded."""
    doc = _doc(padding="x" * (50 * 1024 * 1024))
    exc = await _error(httpx.Response(200, json=doc))
    assert isinstance(exc, RecordTooLarge) and exc.reason == "record_too_large"
    assert exc.pass_id == PID and not exc.retryable
    assert _clean(exc) == (
        "record_too_large: /idpass/details: record (the answer without images) "
        f"exceeds {MAX_RECORD_BYTES} bytes"
    )


async def test_the_record_bound_excludes_images_and_counts_inside_the_envelope():
    big_image = base64.b64encode(make_jpeg(400, 300)).decode()
    doc = _doc(images={"probe": big_image})
    size = len(json.dumps({k: v for k, v in doc.items() if k != "images"}).encode())
    assert len(big_image) > 2 * size
    read = await _details(httpx.Response(200, json=doc), max_record_bytes=size)
    assert set(read.images) == {"probe"}
    wrapped = {"data": _doc(padding="y" * 600)}
    exc = await _error(httpx.Response(200, json=wrapped), max_record_bytes=size + 100)
    assert isinstance(exc, RecordTooLarge)


def test_load_json_refuses_a_large_record_before_decoding_it():
    body = b'{"id": "x", "blob": "' + b"z" * 1000 + b'", "images": {"p": "QUJD"}}'
    assert load_json(body, max_record_bytes=2000)["images"]["p"] == b"QUJD"
    with pytest.raises(RecordTooLarge):
        load_json(body, max_record_bytes=1000)


# --- tolerant reader ----------------------------------------------------------------


async def test_a_data_uri_image_is_read_without_its_prefix_and_without_a_copy():
    """The prefix is removed; the image is still a view of the body (no copy)."""
    body = json.dumps(_doc(images={"probe": f"data:image/jpeg;base64,{B64}"})).encode()
    read = await _details(
        httpx.Response(200, content=body, headers={"content-type": "application/json"})
    )
    assert isinstance(read.images["probe"], memoryview)
    assert decode_base64(read.images["probe"], max_bytes=10**6) == JPEG


async def test_a_data_uri_with_escaped_slashes_is_read():
    text = f"data:image/jpeg;base64,{B64}".replace("/", "\\/")
    body = (
        json.dumps(_doc(images={}))
        .encode()
        .replace(b'"images": {}', f'"images": {{"probe": "{text}"}}'.encode())
    )
    read = await _details(
        httpx.Response(200, content=body, headers={"content-type": "application/json"})
    )
    assert decode_base64(read.images["probe"], max_bytes=10**6) == JPEG


def test_a_data_uri_that_is_not_base64_image_data_says_so():
    """It used to be "not valid Base64", which did not say why."""
    for text in ("data:text/plain,hello", b"data:image/jpeg,/9j/"):
        with pytest.raises(ImageDecodeError) as info:
            decode_base64(text, max_bytes=100)
        assert "a data URI that is not data:image/...;base64" in str(info.value)


async def test_images_as_a_list_of_slot_objects_are_read():
    entries = [{"slot": "probe", "data": B64}, {"slot": "id_photo", "data": None}]
    read = await _details(httpx.Response(200, json=_doc(images=entries)))
    assert decode_base64(read.images["probe"], max_bytes=10**6) == JPEG
    assert read.null_slots == ("id_photo",)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (
            [{"slot": "probe", "data": B64}, {"slot": "probe", "data": B64}],
            "lists slot probe twice",
        ),
        ([{"slot": PERSON, "data": B64}, {"slot": PERSON, "data": None}], "unrecognised twice"),
        ([{"data": B64}], "entry 0 is not a {slot, data} object"),
        ([{"slot": "probe"}], "entry 0 is not a {slot, data} object"),
        ([{"slot": 5, "data": B64}], "entry 0 is not a {slot, data} object"),
        ([B64], "entry 0 is not a {slot, data} object"),
    ],
)
async def test_a_list_of_images_that_is_not_slot_objects_is_malformed(entries, message):
    exc = await _error(httpx.Response(200, json=_doc(images=entries)))
    assert isinstance(exc, ApiMalformedResponse)
    assert message in _clean(exc)


@pytest.mark.parametrize(
    ("error", "exc_type", "shown"),
    [
        ({"code": "pass_not_found", "message": PERSON}, ApiNotFound, "pass_not_found"),
        ({"code": "invalid_id"}, ApiBadRequest, "invalid_id"),
        ({"code": "unauthorized"}, ApiAuthError, "unauthorized"),
        ({"code": "rate_limited"}, ApiRateLimited, "rate_limited"),
        ({"code": "database_on_fire"}, ApiServerError, "database_on_fire"),
        ({"code": PERSON, "message": PERSON}, ApiServerError, "unrecognised"),
        ({"message": PERSON}, ApiServerError, "unspecified"),
        ("pass_not_found", ApiNotFound, "pass_not_found"),
    ],
)
async def test_an_http_200_error_envelope_is_an_api_error(error, exc_type, shown):
    """It failed as "does not match the expected shape (id: missing ...)"."""
    exc = await _error(httpx.Response(200, json={"error": error, "data": None}))
    assert type(exc) is exc_type and exc.status_code == 200
    assert _clean(exc).endswith(f"HTTP 200 with an error envelope ({shown})")


async def test_a_pass_with_an_error_field_is_still_a_pass():
    read = await _details(httpx.Response(200, json=_doc(error=None)))
    assert read.details.id == PID
    read = await _details(httpx.Response(200, json=_doc(error={"code": "late"})))
    assert read.details.id == PID and read.record["error"] == {"code": "late"}


# --- clock skew ---------------------------------------------------------------------


def _dated(date: str | None):
    headers = {"date": date} if date is not None else {}
    return lambda request: httpx.Response(200, json=_doc(), headers=headers)


async def test_the_date_header_gives_the_api_clock_skew():
    """Logged once per client, and once more as a warning when beyond the threshold."""
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    clock = ManualClock(now)
    ahead = "Fri, 01 May 2026 12:10:00 GMT"
    with structlog.testing.capture_logs() as logs:
        async with _client(_dated(ahead), clock=clock) as api:
            assert api.clock_skew is None
            read = await api.details(PID)
            assert read.server_date == now + timedelta(minutes=10)
            assert api.clock_skew == 600.0
            clock.advance(timedelta(minutes=10))
            await api.details(PID)
            assert api.clock_skew == 0.0
    events = [(e["log_level"], e["skew_seconds"]) for e in logs if e["event"] == "api_clock_skew"]
    assert events == [("info", 600.0), ("warning", 600.0)]


async def test_a_small_skew_is_logged_once_without_a_warning():
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with structlog.testing.capture_logs() as logs:
        async with _client(_dated("Fri, 01 May 2026 11:59:58 GMT"), clock=ManualClock(now)) as api:
            for _ in range(3):
                await api.details(PID)
            assert api.clock_skew == -2.0
    events = [(e["log_level"], e["skew_seconds"]) for e in logs if e["event"] == "api_clock_skew"]
    assert events == [("info", -2.0)]


@pytest.mark.parametrize("date", [None, "", PERSON, "Fri, 99 Foo 2026 25:61:00 GMT", ESCAPES[1]])
async def test_a_missing_or_garbled_date_header_is_tolerated(date):
    with structlog.testing.capture_logs() as logs:
        async with _client(_dated(date)) as api:
            read = await api.details(PID)
            assert read.server_date is None and api.clock_skew is None
    assert not [e for e in logs if e["event"] == "api_clock_skew"]


async def test_the_skew_is_measured_from_an_error_answer_too():
    """``doctor`` probes with a random id and is answered 404: the skew is known."""
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)

    def handler(request):
        return httpx.Response(
            404,
            json={"error": {"code": "not_found"}},
            headers={"date": "Fri, 01 May 2026 11:55:00 GMT"},
        )

    async with _client(handler, clock=ManualClock(now)) as api:
        with pytest.raises(ApiNotFound):
            await api.details(PID)
        assert api.clock_skew == -300.0
