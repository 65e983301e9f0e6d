"""The client against hand-written golden answers (tests/fixtures/golden/README.md).

Each answer's bytes are served as the API would serve them; the expectations below
are written from the answers themselves (slots, images, record fields), not from
what the client happens to return.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from archiver.core.images import check_image, decode_base64
from archiver.errors import ApiNotFound
from archiver.idpass import crypto
from archiver.idpass.client import IdPassClient, PassRead

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
#: The encrypted answer's cipher key is the SHA-256 of this text (no key file is kept).
ENCRYPTED_KEY_TEXT = b"idpass-archiver golden answer: details-encrypted"
PID = "6f1d2c3b-4a5e-4f60-9a7b-8c9d0e1f2a3b"
JPEG = {name: (GOLDEN / f"{name}.jpg").read_bytes() for name in ("probe", "id_photo", "document")}
COMPLETED = datetime(2026, 3, 2, 9, 11, 40, tzinfo=UTC)
DATE = "Mon, 02 Mar 2026 09:20:00 GMT"

# file -> slot -> golden JPEG (None: a null slot), retention days, verification status
CASES: dict[str, tuple[dict[str, str | None], int, str]] = {
    "details-plain.json": (
        {
            "probe": "probe",
            "id_photo": "id_photo",
            "document_1_front": "document",
            "document_1_back": None,
        },
        30,
        "passed",
    ),
    "details-wrapped.json": ({"probe": "probe"}, 14, "passed"),
    "details-null-slots.json": (
        {
            "probe": None,
            "id_photo": "id_photo",
            "id_photo_cropped": None,
            "document_1_front": None,
            "document_1_back": None,
            "document_1_photo": None,
        },
        30,
        "failed",
    ),
    "details-data-uri.json": (
        {"probe": "probe", "id_photo": "id_photo", "document_1_front": "document"},
        30,
        "passed",
    ),
    "details-image-list.json": (
        {"probe": "probe", "document_1_front": "document", "id_photo": None},
        30,
        "passed",
    ),
}


def _serve(name: str) -> httpx.MockTransport:
    body = (GOLDEN / name).read_bytes()

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "application/json; charset=utf-8", "date": DATE}
        return httpx.Response(200, content=body, headers=headers)

    return httpx.MockTransport(handler)


async def _read(name: str, **kwargs: Any) -> PassRead:
    async with IdPassClient("http://api.test", "t", transport=_serve(name)) as api:
        return await api.details(PID, **kwargs)


@pytest.mark.parametrize("name", sorted(CASES))
async def test_golden_answer_reads_as_written(name):
    """Every slot of the answer, and only those, with the JPEG bytes it holds; the
    record fields as written; the images not in the record."""
    slots, retention, verification = CASES[name]
    read = await _read(name)
    assert set(read.images) == {s for s, j in slots.items() if j is not None}
    assert set(read.null_slots) == {s for s, j in slots.items() if j is None}
    for slot, text in read.images.items():
        data = decode_base64(text, slot=slot, max_bytes=10_000)
        assert data == JPEG[slots[slot] or ""], slot
        check_image(slot, data)  # a real JPEG
    assert read.images_field_present and not read.encrypted
    d = read.details
    assert (d.id, d.status, d.verification_status) == (PID, "complete", verification)
    assert d.completed_at == COMPLETED and d.image_retention_days == retention
    assert d.link_validity_days == 7
    assert "images" not in read.record and read.record["id"] == PID
    assert read.response_bytes == (GOLDEN / name).stat().st_size
    assert read.server_date == datetime(2026, 3, 2, 9, 20, tzinfo=UTC)


async def test_golden_plain_answer_keeps_every_record_field():
    """The record is the answer without images, field for field."""
    read = await _read("details-plain.json")
    assert read.record["verified_identity"] == {
        "first_name": "Elsbeth",
        "last_name": "Varnock",
        "date_of_birth": "1990-05-17",
    }
    assert read.record["config"]["requester_name"] == "Golden Test Ltd"
    assert read.record["ip_address"] == "198.51.100.23"
    assert read.details.config is not None and read.details.config.check_liveness is True
    assert read.details.consent_given_at == datetime(2026, 3, 2, 9, 5, 12, tzinfo=UTC)


async def test_golden_wrapped_answer_drops_the_wrapper():
    """The pass is the object under "data"; the field beside it is not the record's."""
    read = await _read("details-wrapped.json")
    assert "request_id" not in read.record and "data" not in read.record
    assert read.record["verified_identity"]["last_name"] == "Varnock"


async def test_golden_encrypted_answer_opens_with_its_key():
    """Local decryption with its key (derived, as the golden README says): the
    record's sealed fields in plain text, each image token opening to the golden JPEG."""
    key = base64.b64encode(hashlib.sha256(ENCRYPTED_KEY_TEXT).digest()).decode()
    read = await _read("details-encrypted.json", decrypt_locally_with=key)
    assert read.encrypted
    assert read.record["verified_identity"] == {
        "first_name": "Elsbeth",
        "last_name": "Varnock",
        "date_of_birth": "1990-05-17",
    }
    assert read.record["config"]["requested_identity"]["first_name"] == "Elsbeth"
    assert read.record["ip_address"] == "198.51.100.23"
    assert crypto.MARKER_FIELD not in read.record
    assert set(read.images) == {"probe", "id_photo"}
    assert read.null_slots == ("document_1_front",)
    raw = crypto.parse_key(key)
    for slot, token in read.images.items():
        assert crypto.decrypt_value(raw, token) == JPEG[slot]
    assert read.details.completed_at == COMPLETED and read.details.image_retention_days == 30


async def test_golden_encrypted_answer_without_the_key_stays_sealed():
    """Without a local key the answer is read, and nothing in it is opened."""
    read = await _read("details-encrypted.json")
    assert read.encrypted
    assert read.record["verified_identity"]["first_name"] != "Elsbeth"
    assert read.record[crypto.MARKER_FIELD] == "aes-256-gcm"
    assert set(read.images) == {"probe", "id_photo"}


async def test_golden_error_envelope_is_an_api_error_with_its_code():
    """An HTTP 200 error envelope is the API error its code names, never a shape
    error, and its message is not repeated."""
    with pytest.raises(ApiNotFound) as info:
        await _read("details-error-envelope.json")
    assert info.value.status_code == 200 and info.value.pass_id == PID
    assert info.value.reason == "api_not_found"
    assert str(info.value) == "/idpass/details: HTTP 200 with an error envelope (pass_not_found)"
