"""The sandbox over real HTTP on loopback: public ID Pass routes and admin routes."""

from __future__ import annotations

import base64
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from PIL import Image

from archiver.clock import isoformat
from archiver.idpass import crypto
from archiver.idpass.models import SLOTS, PassDetails
from archiver.sandbox import SandboxServer

DEFAULT_SLOTS = {
    "probe",
    "document_1_front",
    "document_1_back",
    "document_1_photo",
    "id_photo",
    "id_photo_cropped",
}


def create(http: httpx.Client, **body: Any) -> dict[str, Any]:
    r = http.post("/_sandbox/passes", json=body)
    assert r.status_code == 201, r.text
    passes: list[dict[str, Any]] = r.json()["passes"]
    return passes[0]


def details(http: httpx.Client, pass_id: str, **body: Any) -> httpx.Response:
    return http.post("/idpass/details", json={"id": pass_id, **body})


def plain(http: httpx.Client, p: dict[str, Any], **flags: Any) -> dict[str, Any]:
    r = details(http, p["id"], cipher_key=p["cipher_key"], **flags)
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    code: str = body["error"]["code"]
    return code


def now_of(http: httpx.Client) -> datetime:
    return datetime.fromisoformat(http.get("/_sandbox/clock").json()["now"])


# --- auth ---------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic abc", "Bearer"])
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/idpass/details"), ("POST", "/idpass/register"), ("GET", "/_sandbox/ledger")],
)
def test_requests_without_the_token_get_401(
    sandbox_reset: SandboxServer, auth: str | None, method: str, path: str
) -> None:
    """A missing or wrong bearer token is refused with 401 and a JSON error, on every route."""
    headers = {"Authorization": auth} if auth else {}
    r = httpx.request(method, sandbox_reset.base_url + path, headers=headers, json={}, timeout=10)
    assert r.status_code == 401
    assert error_code(r) == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


def test_the_bearer_scheme_is_case_insensitive(sandbox_reset: SandboxServer) -> None:
    """The token is accepted whatever the case of the word Bearer."""
    headers = {"Authorization": f"bearer {sandbox_reset.token}"}
    r = httpx.get(sandbox_reset.base_url + "/_sandbox/clock", headers=headers, timeout=10)
    assert r.status_code == 200


# --- register -------------------------------------------------------------------------


def test_register_returns_id_key_link_and_reference(sandbox_http: httpx.Client) -> None:
    """Register answers a UUID, a Base64 32-byte cipher key, the flow link and a reference."""
    r = sandbox_http.post(
        "/idpass/register", json={"requested_identity": {"first_name": "Ysolorique"}}
    )
    assert r.status_code == 200
    doc = r.json()
    assert set(doc) == {"id", "cipher_key", "link", "api_reference"}
    assert uuid.UUID(doc["id"]).version == 4
    assert uuid.UUID(doc["api_reference"]).version == 4
    assert len(crypto.parse_key(doc["cipher_key"])) == 32
    assert doc["link"] == f"{sandbox_http.base_url}/flow/{doc['id']}"
    read = plain(sandbox_http, doc)
    assert read["status"] == "new"
    assert read["verification_status"] is None
    assert read["completed_at"] is None


def test_register_fills_documented_defaults(sandbox_http: httpx.Client) -> None:
    """A minimal registration echoes the documented defaults in config."""
    reg = sandbox_http.post("/idpass/register", json={}).json()
    config = plain(sandbox_http, reg)["config"]
    assert config["link_validity_days"] == 7
    assert config["image_retention_days"] == 0
    assert config["document_verification"] == "dvs"
    assert config["require_id_photo"] is False
    assert config["requested_identity"] is None


def test_register_echoes_the_given_settings(sandbox_http: httpx.Client) -> None:
    """Every registration setting comes back under config in details."""
    body = {
        "link_validity_days": 14,
        "image_retention_days": 5000,
        "check_liveness": False,
        "document_1_allowed_types": ["passport"],
        "document_2_allowed_types": ["medicare", "centrelink"],
        "document_verification": "idsp",
        "require_id_photo": True,
        "id_photo_purpose": "Member card",
        "webhook_url": "https://kyc.example/hook",
        "webhook_events": ["complete", "expired"],
        "return_url": "https://kyc.example/done",
        "requested_identity": {"last_name": "Vellumcombe", "date_of_birth": "1961-07-04"},
    }
    reg = sandbox_http.post("/idpass/register", json=body).json()
    config = plain(sandbox_http, reg)["config"]
    for key, value in body.items():
        if key != "requested_identity":
            assert config[key] == value, key
    assert config["requested_identity"] == {
        "first_name": None,
        "middle_name": None,
        "last_name": "Vellumcombe",
        "date_of_birth": "1961-07-04",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"link_validity_days": 0},
        {"link_validity_days": 15},
        {"link_validity_days": "7"},
        {"link_validity_days": True},
        {"image_retention_days": -1},
        {"image_retention_days": 5001},
        {"image_retention_days": 1.5},
        {"check_liveness": "yes"},
        {"document_1_allowed_types": ["drivers_licence"]},
        {"document_2_allowed_types": []},
        {"document_3_allowed_types": "passport"},
        {"document_verification": "manual"},
        {"require_id_photo": True},
        {"webhook_url": "ftp://kyc.example/hook"},
        {"webhook_url": "https://kyc.example/hook", "webhook_events": ["archived"]},
        {"webhook_events": ["complete"]},
        {"return_url": 12},
        {"requested_identity": {}},
        {"requested_identity": {"middle_name": "Only"}},
        {"requested_identity": "Zephyrine"},
        {"requested_identity": {"first_name": "Zephyrine", "date_of_birth": "04/07/1961"}},
    ],
)
def test_register_rejects_invalid_settings(sandbox_http: httpx.Client, body: Any) -> None:
    """A registration outside the documented ranges and choices is a 400 and creates nothing."""
    r = sandbox_http.post("/idpass/register", json=body)
    assert r.status_code == 400
    assert error_code(r) == "invalid_field"
    assert sandbox_http.get("/_sandbox/ledger").content == b""


@pytest.mark.parametrize("content", [b"not json", b"[1, 2]", b""])
def test_register_rejects_a_body_that_is_not_a_json_object(
    sandbox_http: httpx.Client, content: bytes
) -> None:
    """A body that is not a JSON object is a 400 invalid_json."""
    r = sandbox_http.post("/idpass/register", content=content)
    assert r.status_code == 400
    assert error_code(r) == "invalid_json"


def test_error_messages_do_not_echo_personal_data(sandbox_http: httpx.Client) -> None:
    """A rejected date of birth is named, not repeated, in the error message."""
    identity = {"first_name": "Zephyrine", "date_of_birth": "31/12/1961"}
    r = sandbox_http.post("/idpass/register", json={"requested_identity": identity})
    assert r.status_code == 400
    assert "31/12/1961" not in r.text and "Zephyrine" not in r.text


# --- details --------------------------------------------------------------------------


def test_details_has_the_documented_shape(sandbox_http: httpx.Client) -> None:
    """A complete pass read with every flag carries each documented data point."""
    p = create(sandbox_http)
    doc = plain(sandbox_http, p, return_logs=True, return_documents=True, return_images=True)
    assert {
        "id",
        "status",
        "verification_status",
        "verification_description",
        "config",
        "created_at",
        "consent_given_at",
        "completed_at",
        "consent_text",
        "ip_address",
        "validation_summary",
        "verified_identity",
        "requested_identity_mismatch",
        "api_reference",
        "logs",
        "documents",
        "images",
    } <= set(doc)
    assert doc["id"] == p["id"] and doc["status"] == "complete"
    assert doc["verification_status"] == "passed"
    assert doc["config"]["image_retention_days"] == 30
    assert set(doc["config"]["requested_identity"]) == {
        "first_name",
        "middle_name",
        "last_name",
        "date_of_birth",
    }
    assert {"privacy_policy_url", "requester_name", "webhook_url"} <= set(doc["config"])
    for field in ("created_at", "consent_given_at", "completed_at"):
        assert doc[field].endswith("Z")
        assert datetime.fromisoformat(doc[field]).tzinfo is not None
    assert doc["completed_at"] == p["completed_at"]
    assert doc["created_at"] < doc["consent_given_at"] < doc["completed_at"]
    assert set(doc["verified_identity"]) == {
        "first_name",
        "middle_name",
        "last_name",
        "date_of_birth",
        "address",
    }
    summary = doc["validation_summary"]
    assert set(summary["liveness_result"]) == {
        "validated",
        "confidence",
        "attempts",
        "bounding_box",
    }
    assert set(summary["document_1"]) == {
        "document_type",
        "validated_fields",
        "biographic_validated",
        "biometric_validated",
        "biometric_similarity",
        "biometric_threshold",
        "changes",
    }
    assert summary["document_2"] is None
    assert all(set(entry) == {"timestamp", "ip", "event"} for entry in doc["logs"])
    assert doc["logs"][-1]["event"] == "pass_completed"
    assert set(doc["documents"]) == {"document_1"}
    assert {"ocr", "validation_result", "validation_data"} == set(doc["documents"]["document_1"])
    ocr = doc["documents"]["document_1"]["ocr"]
    assert ocr["date_of_birth"] == doc["verified_identity"]["date_of_birth"]
    assert uuid.UUID(doc["api_reference"])
    typed = PassDetails.model_validate({k: v for k, v in doc.items() if k != "images"})
    assert typed.image_retention_days == 30 and typed.is_terminal


def test_details_leaves_out_what_was_not_asked_for(sandbox_http: httpx.Client) -> None:
    """Without the return_* flags there are no logs, documents or images keys."""
    doc = plain(sandbox_http, create(sandbox_http))
    assert not {"logs", "documents", "images"} & set(doc)


def test_details_is_stable_across_reads(sandbox_http: httpx.Client) -> None:
    """Two reads of the same pass return the same document, images included."""
    p = create(sandbox_http)
    flags = {"return_logs": True, "return_documents": True, "return_images": True}
    assert plain(sandbox_http, p, **flags) == plain(sandbox_http, p, **flags)


@pytest.mark.parametrize("bad_id", ["abc", 123, None, "", ["0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"]])
def test_details_rejects_an_id_that_is_not_a_uuid(sandbox_http: httpx.Client, bad_id: Any) -> None:
    """An id that is not a UUID string is a 400 invalid_id."""
    r = details(sandbox_http, bad_id)
    assert r.status_code == 400
    assert error_code(r) == "invalid_id"


def test_details_of_an_unknown_pass_is_404(sandbox_http: httpx.Client) -> None:
    """A well-formed id the sandbox never issued is a 404."""
    r = details(sandbox_http, str(uuid.uuid4()))
    assert r.status_code == 404
    assert error_code(r) == "pass_not_found"


def test_details_with_another_pass_key_is_400(sandbox_http: httpx.Client) -> None:
    """A cipher_key that is not the pass's own is refused with cipher_key_mismatch."""
    p, q = create(sandbox_http), create(sandbox_http)
    r = details(sandbox_http, p["id"], cipher_key=q["cipher_key"])
    assert r.status_code == 400
    assert error_code(r) == "cipher_key_mismatch"
    assert q["cipher_key"] not in r.text


@pytest.mark.parametrize("flag", ["return_logs", "return_images", "return_documents"])
def test_details_rejects_non_boolean_flags(sandbox_http: httpx.Client, flag: str) -> None:
    """The return_* flags must be JSON booleans."""
    p = create(sandbox_http)
    r = details(sandbox_http, p["id"], cipher_key=p["cipher_key"], **{flag: "true"})
    assert r.status_code == 400


# --- images ---------------------------------------------------------------------------


def test_images_are_valid_jpegs_equal_to_the_ground_truth(sandbox_http: httpx.Client) -> None:
    """Each captured slot is a decodable baseline JPEG, byte-equal to the admin image route."""
    p = create(sandbox_http)
    images = plain(sandbox_http, p, return_images=True)["images"]
    present = {slot for slot, value in images.items() if value is not None}
    assert present == DEFAULT_SLOTS
    seen = set()
    for slot in present:
        jpeg = base64.b64decode(images[slot], validate=True)
        assert jpeg.startswith(b"\xff\xd8") and jpeg.endswith(b"\xff\xd9")
        assert 10_000 <= len(jpeg) <= 1_200_000
        with Image.open(io.BytesIO(jpeg)) as img:
            assert img.format == "JPEG"
            assert not img.info.get("progressive")
            img.load()
            assert min(img.size) >= 256
        truth = sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/{slot}")
        assert truth.status_code == 200
        assert truth.headers["content-type"] == "image/jpeg"
        assert truth.content == jpeg
        seen.add(jpeg)
    assert len(seen) == len(present)


def test_images_of_different_passes_differ(sandbox_http: httpx.Client) -> None:
    """The same slot of two passes holds different bytes."""
    p, q = create(sandbox_http), create(sandbox_http)
    a = sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/probe").content
    b = sandbox_http.get(f"/_sandbox/passes/{q['id']}/images/probe").content
    assert a != b


def test_image_sizes_spread_from_tens_of_kb_to_about_a_megabyte(
    sandbox_http: httpx.Client,
) -> None:
    """Over many passes the image sizes span small crops up to roughly 1 MB scans."""
    sizes = []
    r = sandbox_http.post("/_sandbox/passes", json={"count": 12, "slots": list(SLOTS)})
    for p in r.json()["passes"]:
        for slot in ("document_1_front", "document_2_back", "document_3_photo"):
            sizes.append(len(sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/{slot}").content))
    assert min(sizes) < 80_000
    assert max(sizes) > 700_000
    assert max(sizes) <= 1_200_000


def test_missing_slots_are_absent_or_null_in_both_forms(sandbox_http: httpx.Client) -> None:
    """Slots without an image are either left out or null, and a pass shows both forms."""
    p = create(sandbox_http, slots=["probe", "document_1_front"])
    images = plain(sandbox_http, p, return_images=True)["images"]
    assert set(images) <= set(SLOTS)
    assert {s for s, v in images.items() if v is not None} == {"probe", "document_1_front"}
    nulls = {s for s, v in images.items() if v is None}
    absent = set(SLOTS) - set(images)
    assert nulls and absent
    assert nulls | absent | {"probe", "document_1_front"} == set(SLOTS)
    again = plain(sandbox_http, p, return_images=True)["images"]
    assert set(again) == set(images)


def test_ground_truth_route_is_404_for_a_slot_without_image(sandbox_http: httpx.Client) -> None:
    """The admin image route answers 404 for an uncaptured or unknown slot."""
    p = create(sandbox_http, slots=["probe"])
    for slot in ("id_photo", "selfie"):
        r = sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/{slot}")
        assert r.status_code == 404
        assert error_code(r) == "image_not_found"


# --- retention ------------------------------------------------------------------------


def test_images_disappear_when_the_retention_window_closes(sandbox_http: httpx.Client) -> None:
    """Images are served until completed_at + retention days, then the images object is empty."""
    p = create(sandbox_http, image_retention_days=2)
    completed = datetime.fromisoformat(p["completed_at"])
    sandbox_http.post("/_sandbox/clock", json={"set": isoformat(completed + timedelta(days=2))})
    sandbox_http.post("/_sandbox/clock", json={"advance_seconds": -5})
    assert plain(sandbox_http, p, return_images=True)["images"]["probe"]
    sandbox_http.post("/_sandbox/clock", json={"advance_seconds": 10})
    doc = plain(sandbox_http, p, return_images=True)
    assert doc["images"] == {}
    assert doc["status"] == "complete"
    ground_truth = sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/probe")
    assert ground_truth.status_code == 200


def test_retention_zero_never_serves_images(sandbox_http: httpx.Client) -> None:
    """With image_retention_days 0 a complete pass has no images, even right after completion."""
    p = create(sandbox_http, image_retention_days=0)
    doc = plain(sandbox_http, p, return_images=True)
    assert doc["images"] == {}
    assert doc["verified_identity"] is not None


def test_a_pass_completed_in_the_past_is_judged_by_its_window(sandbox_http: httpx.Client) -> None:
    """A pass created with completed_at 10 days ago and 3 days' retention has no images."""
    past = now_of(sandbox_http) - timedelta(days=10)
    p = create(sandbox_http, image_retention_days=3, completed_at=isoformat(past))
    assert p["created_at"] == isoformat(past - timedelta(minutes=10))
    assert plain(sandbox_http, p, return_images=True)["images"] == {}


@pytest.mark.parametrize("status", ["new", "opened", "in_progress", "expired", "cancelled"])
def test_unfinished_passes_have_no_images(sandbox_http: httpx.Client, status: str) -> None:
    """Only complete (or failed) passes serve images, whatever slots they hold."""
    p = create(sandbox_http, status=status, slots=["probe"])
    doc = plain(sandbox_http, p, return_images=True)
    assert doc["status"] == status
    assert doc["images"] == {}
    assert doc["verification_status"] is None


def test_a_failed_pass_serves_the_images_it_captured(sandbox_http: httpx.Client) -> None:
    """A failed pass that captured images serves them inside its window."""
    p = create(sandbox_http, status="failed")
    doc = plain(sandbox_http, p, return_images=True)
    assert doc["verification_status"] == "failed"
    assert {s for s, v in doc["images"].items() if v} == {
        "probe",
        "document_1_front",
        "document_1_back",
    }


# --- encryption -----------------------------------------------------------------------


def test_details_without_key_is_encrypted_and_decrypts_to_the_plain_read(
    sandbox_http: httpx.Client,
) -> None:
    """Omitting cipher_key encrypts the sensitive fields; local decryption gives the plain read."""
    p = create(sandbox_http)
    flags = {"return_logs": True, "return_documents": True, "return_images": True}
    clear = plain(sandbox_http, p, **flags)
    r = details(sandbox_http, p["id"], **flags)
    assert r.status_code == 200
    sealed = r.json()
    assert crypto.is_encrypted(sealed)
    assert sealed["verified_identity"]["first_name"] != clear["verified_identity"]["first_name"]
    assert sealed["images"]["probe"] != clear["images"]["probe"]
    assert set(sealed["images"]) == set(clear["images"])
    assert crypto.decrypt_response(sealed, p["cipher_key"]) == clear


def test_an_encrypted_read_leaks_no_personal_data(sandbox_http: httpx.Client) -> None:
    """No personal string or cipher key appears anywhere in an encrypted details response."""
    p = create(sandbox_http, slots=list(SLOTS))
    flags = {"return_logs": True, "return_documents": True, "return_images": True}
    raw = details(sandbox_http, p["id"], **flags).text
    pii = sandbox_http.get("/_sandbox/pii").json()["strings"]
    clear = plain(sandbox_http, p, return_logs=True, return_documents=True)
    assert clear["verified_identity"]["last_name"] in pii
    assert clear["ip_address"] in pii
    assert p["cipher_key"] in pii
    leaked = [s for s in pii if s in raw]
    assert leaked == []


def test_pii_lists_every_personal_string_of_a_read(sandbox_http: httpx.Client) -> None:
    """Every string under the personal fields of a plain read is in the pii list."""
    p = create(sandbox_http, slots=list(SLOTS))
    doc = plain(sandbox_http, p, return_documents=True)
    pii = set(sandbox_http.get("/_sandbox/pii").json()["strings"])
    identity = doc["verified_identity"]
    assert set(identity.values()) <= pii
    for document in doc["documents"].values():
        ocr = document["ocr"]
        assert {ocr["document_number"], ocr["name"], ocr["date_of_birth"]} <= pii
    assert all(len(s) >= 6 for s in pii)


# --- cancel ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", ["new", "opened", "in_progress"])
def test_an_open_pass_can_be_cancelled(sandbox_http: httpx.Client, status: str) -> None:
    """Cancelling a new, opened or in-progress pass refunds the fee and ends the pass."""
    p = create(sandbox_http, status=status)
    r = sandbox_http.post("/idpass/cancel", json={"id": p["id"]})
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "cancelled" and body["fee_refunded"] is True
    assert uuid.UUID(body["api_reference"])
    doc = plain(sandbox_http, p)
    assert doc["status"] == "cancelled"
    assert doc["completed_at"] is not None


@pytest.mark.parametrize("status", ["complete", "expired", "failed", "cancelled"])
def test_a_terminal_pass_cannot_be_cancelled(sandbox_http: httpx.Client, status: str) -> None:
    """Cancelling a pass in a terminal status is a 400 and changes nothing."""
    p = create(sandbox_http, status=status)
    r = sandbox_http.post("/idpass/cancel", json={"id": p["id"]})
    assert r.status_code == 400
    assert error_code(r) == "pass_not_cancellable"
    assert plain(sandbox_http, p)["status"] == status


def test_cancel_of_unknown_or_malformed_ids(sandbox_http: httpx.Client) -> None:
    """Cancel answers 404 for an unknown pass and 400 for a non-UUID id."""
    assert sandbox_http.post("/idpass/cancel", json={"id": str(uuid.uuid4())}).status_code == 404
    assert sandbox_http.post("/idpass/cancel", json={"id": "nope"}).status_code == 400


# --- admin ----------------------------------------------------------------------------


def test_ledger_lists_every_pass_as_ndjson(sandbox_http: httpx.Client) -> None:
    """The ledger has one JSON line per pass with what a KYC system would have recorded."""
    done = sandbox_http.post("/_sandbox/passes", json={"count": 2}).json()["passes"]
    reg = sandbox_http.post("/idpass/register", json={"image_retention_days": 9}).json()
    r = sandbox_http.get("/_sandbox/ledger")
    assert r.headers["content-type"] == "application/x-ndjson"
    assert r.content.endswith(b"\n")
    lines = [orjson.loads(line) for line in r.content.splitlines()]
    assert len(lines) == 3
    keys = {"id", "cipher_key", "status", "created_at", "completed_at", "image_retention_days"}
    assert all(set(line) == keys for line in lines)
    assert lines[:2] == done
    assert lines[2] == {
        "id": reg["id"],
        "cipher_key": reg["cipher_key"],
        "status": "new",
        "created_at": lines[2]["created_at"],
        "completed_at": None,
        "image_retention_days": 9,
    }


def test_create_many_passes_at_once(sandbox_http: httpx.Client) -> None:
    """count creates that many alike passes, each with its own id and key."""
    r = sandbox_http.post(
        "/_sandbox/passes", json={"count": 5, "status": "in_progress", "image_retention_days": 4}
    )
    passes = r.json()["passes"]
    assert len({p["id"] for p in passes}) == len({p["cipher_key"] for p in passes}) == 5
    assert all(p["status"] == "in_progress" and p["completed_at"] is None for p in passes)
    assert all(p["image_retention_days"] == 4 for p in passes)


@pytest.mark.parametrize(
    "body",
    [
        {"status": "done"},
        {"slots": ["selfie"]},
        {"count": 0},
        {"image_retention_days": 5001},
        {"completed_at": "yesterday"},
        {"completed_at": "2026-01-01T00:00:00"},
        {"status": "in_progress", "completed_at": "2026-01-01T00:00:00Z"},
        {"created_at": "2026-01-02T00:00:00Z", "completed_at": "2026-01-01T00:00:00Z"},
        {"status": "new", "verification_status": "passed"},
    ],
)
def test_create_rejects_inconsistent_passes(sandbox_http: httpx.Client, body: Any) -> None:
    """The admin create route refuses bodies that describe an impossible pass."""
    assert sandbox_http.post("/_sandbox/passes", json=body).status_code == 400


def test_complete_moves_a_registered_pass_to_complete(sandbox_http: httpx.Client) -> None:
    """Completing a registered pass gives it the images its registration asks for."""
    reg = sandbox_http.post(
        "/idpass/register",
        json={"image_retention_days": 1, "require_id_photo": True, "id_photo_purpose": "Card"},
    ).json()
    assert sandbox_http.post(f"/_sandbox/passes/{reg['id']}/status", json={"status": "in_progress"})
    r = sandbox_http.post(f"/_sandbox/passes/{reg['id']}/complete", json={})
    assert r.status_code == 200
    assert r.json()["status"] == "complete"
    doc = plain(sandbox_http, reg, return_images=True)
    assert doc["verification_status"] == "passed"
    assert {s for s, v in doc["images"].items() if v} == DEFAULT_SLOTS
    again = sandbox_http.post(f"/_sandbox/passes/{reg['id']}/complete", json={})
    assert again.status_code == 409


def test_complete_takes_time_verdict_and_slots(sandbox_http: httpx.Client) -> None:
    """The complete route honours completed_at, verification_status and slots."""
    reg = sandbox_http.post("/idpass/register", json={"image_retention_days": 30}).json()
    when = now_of(sandbox_http) + timedelta(minutes=5)
    body = {"completed_at": isoformat(when), "verification_status": "failed", "slots": ["probe"]}
    sandbox_http.post(f"/_sandbox/passes/{reg['id']}/complete", json=body).raise_for_status()
    doc = plain(sandbox_http, reg, return_images=True)
    assert doc["completed_at"] == isoformat(when)
    assert doc["verification_status"] == "failed"
    assert {s for s, v in doc["images"].items() if v} == {"probe"}


def test_status_route_sets_any_status(sandbox_http: httpx.Client) -> None:
    """The status route moves a pass to any status and keeps its timestamps consistent."""
    p = create(sandbox_http, status="new")
    r = sandbox_http.post(f"/_sandbox/passes/{p['id']}/status", json={"status": "in_progress"})
    assert r.json()["status"] == "in_progress"
    doc = plain(sandbox_http, p)
    assert doc["status"] == "in_progress"
    assert doc["consent_given_at"] is not None and doc["completed_at"] is None
    r = sandbox_http.post(f"/_sandbox/passes/{p['id']}/status", json={"status": "expired"})
    assert plain(sandbox_http, p)["completed_at"] is not None
    bad = sandbox_http.post(f"/_sandbox/passes/{p['id']}/status", json={"status": "done"})
    assert bad.status_code == 400


def test_clock_can_be_read_set_and_advanced(sandbox_http: httpx.Client) -> None:
    """The admin clock is real time plus an offset that set and advance_seconds move."""
    real = datetime.now(UTC)
    assert abs(now_of(sandbox_http) - real) < timedelta(seconds=5)
    target = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    r = sandbox_http.post("/_sandbox/clock", json={"set": isoformat(target)})
    assert abs(datetime.fromisoformat(r.json()["now"]) - target) < timedelta(seconds=5)
    r = sandbox_http.post("/_sandbox/clock", json={"advance_seconds": 86_400})
    moved = datetime.fromisoformat(r.json()["now"]) - target
    assert timedelta(days=1) <= moved < timedelta(days=1, seconds=5)
    assert sandbox_http.post("/_sandbox/clock", json={}).status_code == 400


def test_reset_forgets_passes_and_the_clock_offset(sandbox_http: httpx.Client) -> None:
    """Reset empties the ledger and puts the clock back to real time."""
    create(sandbox_http)
    sandbox_http.post("/_sandbox/clock", json={"advance_seconds": 10**6})
    assert sandbox_http.post("/_sandbox/reset").status_code == 200
    assert sandbox_http.get("/_sandbox/ledger").content == b""
    assert sandbox_http.get("/_sandbox/pii").json() == {"strings": []}
    assert abs(now_of(sandbox_http) - datetime.now(UTC)) < timedelta(seconds=5)


def test_unknown_routes_answer_json_errors(sandbox_http: httpx.Client) -> None:
    """Unknown paths and wrong methods get the API's JSON error shape."""
    r = sandbox_http.post("/idpass/list", json={})
    assert r.status_code == 404 and error_code(r) == "not_found"
    r = sandbox_http.get("/idpass/details")
    assert r.status_code == 405 and error_code(r) == "method_not_allowed"


# --- faults ---------------------------------------------------------------------------


def test_injected_rate_limit_answers_429_with_retry_after(sandbox_http: httpx.Client) -> None:
    """A status fault answers 429 with Retry-After for its count, then the route recovers."""
    p = create(sandbox_http)
    fault = {"kind": "status", "status": 429, "retry_after": 2, "count": 2}
    assert sandbox_http.post("/_sandbox/faults", json=fault).status_code == 200
    for _ in range(2):
        r = details(sandbox_http, p["id"], cipher_key=p["cipher_key"])
        assert r.status_code == 429
        assert r.headers["retry-after"] == "2"
        assert error_code(r) == "rate_limited"
    assert details(sandbox_http, p["id"], cipher_key=p["cipher_key"]).status_code == 200
    assert sandbox_http.get("/_sandbox/faults").json() == {"faults": []}


def test_injected_faults_can_target_one_pass(sandbox_http: httpx.Client) -> None:
    """A fault with pass_id fires only for that pass."""
    p, q = create(sandbox_http), create(sandbox_http)
    sandbox_http.post(
        "/_sandbox/faults", json={"kind": "status", "status": 503, "pass_id": q["id"]}
    )
    assert details(sandbox_http, p["id"]).status_code == 200
    assert details(sandbox_http, q["id"]).status_code == 503


def test_injected_truncation_breaks_the_json(sandbox_http: httpx.Client) -> None:
    """A truncated fault answers 200 with half a JSON body."""
    p = create(sandbox_http)
    sandbox_http.post("/_sandbox/faults", json={"kind": "truncated", "path": "/idpass/details"})
    r = details(sandbox_http, p["id"], return_images=True)
    assert r.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(r.content)


def test_injected_corrupt_image_truncates_one_jpeg(sandbox_http: httpx.Client) -> None:
    """A corrupt_image fault serves the first image cut short, without its EOI marker."""
    p = create(sandbox_http)
    sandbox_http.post("/_sandbox/faults", json={"kind": "corrupt_image"})
    doc = plain(sandbox_http, p, return_images=True)
    jpeg = base64.b64decode(doc["images"]["probe"])
    truth = sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/probe").content
    assert truth.startswith(jpeg) and len(jpeg) < len(truth)
    assert not jpeg.endswith(b"\xff\xd9")
