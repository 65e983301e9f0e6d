"""The ``/idpass/details`` document of a sandbox pass, as a pure function of the record.

The shape is the sandbox's own statement of the wire format (slots and statuses in
:mod:`archiver.sandbox.wire`, nothing taken from the archiver's client): a
top-level object (no envelope), settings under ``config``, images under ``images``
as ``{slot: Base64 JPEG | null}`` (other forms, and faults, are applied on top by
:mod:`archiver.sandbox.spoil`). Everything but the images is derived
deterministically from the pass id, so two reads of a pass agree.

Choices the public pages leave open, made here:

* ``images`` (only with ``return_images``) holds the captured slots while the pass
  is ``complete`` (or ``failed`` with captures), ``image_retention_days`` > 0 and
  ``now < completed_at + image_retention_days``. Outside that window the key is
  still present, as an empty object ``{}``: "the response without images".
* A slot the pass has no image for is either absent or ``null``: by default decided
  per pass from its id (a pass missing two or more slots always shows both forms);
  ``missing="absent"`` or ``missing="null"`` makes every pass answer one way.
* ``validation_summary`` and ``verification_description`` carry no personal data
  (they are not among the encrypted fields); ``changes`` lists field names only.
* ``documents`` (only with ``return_documents``) maps ``document_N`` to its OCR,
  validation result and validation data, for each document the pass captured.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pybase64

from archiver.sandbox import images as sandbox_images
from archiver.sandbox.people import DOCUMENT_TYPES, Persona
from archiver.sandbox.state import PassRecord
from archiver.sandbox.wire import SLOTS, timestamp

CONSENT_TEXT = (
    "I agree that {requester} may collect my identity documents, photographs and a "
    "liveness video, and verify them with the issuers through GlobalData. I have read "
    "the privacy policy."
)
REQUESTER_IP = "198.51.100.20"  # the customer's backend calling register (TEST-NET-2)
BIOMETRIC_THRESHOLD = 0.8
_FINISHED = ("complete", "failed")


def _ts(value: datetime | None) -> str | None:
    return timestamp(value) if value is not None else None


def document_numbers(record: PassRecord) -> list[int]:
    """Which of documents 1..3 the pass captured (judged by its image slots)."""
    return [n for n in (1, 2, 3) if any(s.startswith(f"document_{n}_") for s in record.slots)]


def document_types(record: PassRecord) -> dict[int, str]:
    """The type of each captured document: allowed by its config, distinct where possible."""
    rng = random.Random(record.seed + 100)
    out: dict[int, str] = {}
    for n in document_numbers(record):
        allowed = record.config.get(f"document_{n}_allowed_types") or DOCUMENT_TYPES[n - 1 :]
        unused = [t for t in allowed if t not in out.values()]
        out[n] = rng.choice(unused or allowed)
    return out


def missing_slots(record: PassRecord, missing: str = "mixed") -> dict[str, bool]:
    """Each slot without an image → ``True`` if it is shown as null, ``False`` if absent
    (``missing``: ``mixed``, ``absent`` or ``null``, see the module docstring)."""
    gaps = [s for s in SLOTS if s not in record.slots]
    if missing != "mixed":
        return dict.fromkeys(gaps, missing == "null")
    rng = random.Random(record.seed + 7)
    shown_null = {s: rng.random() < 0.5 for s in gaps}
    if len(gaps) >= 2 and len(set(shown_null.values())) == 1:
        shown_null[gaps[0]] = not shown_null[gaps[0]]
    return shown_null


def image_map(
    record: PassRecord, *, corrupt_first: bool = False, missing: str = "mixed"
) -> dict[str, str | None]:
    """``{slot: Base64 JPEG | None}`` with absent slots left out, in slot order."""
    nulls = missing_slots(record, missing)
    out: dict[str, str | None] = {}
    corrupted = not corrupt_first
    for slot in SLOTS:
        if slot in record.slots:
            jpeg = sandbox_images.image_for(record.id, slot)
            if not corrupted:
                jpeg, corrupted = jpeg[: len(jpeg) // 2], True
            out[slot] = pybase64.b64encode(jpeg).decode("ascii")
        elif nulls[slot]:
            out[slot] = None
    return out


def _verified_identity(p: Persona) -> dict[str, Any]:
    return {
        "first_name": p.first_name,
        "middle_name": p.middle_name,
        "last_name": p.last_name,
        "date_of_birth": p.date_of_birth,
        "address": p.address,
    }


def _description(record: PassRecord) -> str | None:
    if record.status == "complete":
        if record.verification_status == "passed":
            return "All checks passed."
        return "Face did not match the document photo closely enough."
    return {
        "failed": "Document could not be verified with the issuer.",
        "expired": "The link expired before the flow was finished.",
        "cancelled": "The pass was cancelled by the requester.",
    }.get(record.status)


def _validation_summary(record: PassRecord) -> dict[str, Any] | None:
    if record.status not in _FINISHED:
        return None
    rng = random.Random(record.seed + 3)
    passed = record.verification_status == "passed"
    summary: dict[str, Any] = {"liveness_result": None, "id_photo_result": None}
    if record.config.get("check_liveness") and "probe" in record.slots:
        summary["liveness_result"] = {
            "validated": True,
            "confidence": round(rng.uniform(0.9, 0.999), 3),
            "attempts": rng.randint(1, 3),
            "bounding_box": {
                "x": rng.randint(80, 200),
                "y": rng.randint(60, 180),
                "width": rng.randint(260, 360),
                "height": rng.randint(320, 440),
            },
        }
    if "id_photo" in record.slots:
        summary["id_photo_result"] = {
            "validated": True,
            "face_detected": True,
            "quality": round(rng.uniform(0.7, 0.99), 3),
        }
    docs = document_types(record)
    for n in (1, 2, 3):
        if n not in docs:
            summary[f"document_{n}"] = None
            continue
        similarity = rng.uniform(0.86, 0.99) if passed or n > 1 else rng.uniform(0.4, 0.75)
        biographic = record.status == "complete" or n > 1
        summary[f"document_{n}"] = {
            "document_type": docs[n],
            "validated_fields": ["first_name", "last_name", "date_of_birth", "document_number"],
            "biographic_validated": biographic,
            "biometric_validated": similarity >= BIOMETRIC_THRESHOLD,
            "biometric_similarity": round(similarity, 3),
            "biometric_threshold": BIOMETRIC_THRESHOLD,
            "changes": ([{"field": "address", "action": "edited"}] if rng.random() < 0.25 else []),
        }
    return summary


def _documents(record: PassRecord) -> dict[str, Any]:
    p = record.persona
    method = record.config.get("document_verification", "dvs")
    passed = record.status == "complete"
    out: dict[str, Any] = {}
    for n, dtype in document_types(record).items():
        doc = p.document(dtype)
        ocr = {
            "document_type": dtype,
            "document_number": doc.document_number,
            "card_number": doc.card_number,
            "name": p.full_name,
            "first_name": p.first_name,
            "middle_name": p.middle_name,
            "last_name": p.last_name,
            "date_of_birth": p.date_of_birth,
            "address": p.address if dtype == "licence" else None,
            "expiry": doc.expiry,
            "issuer": doc.issuer,
        }
        result: dict[str, Any]
        if method == "dvs":
            result = {
                "strategy": "dvs",
                "match": "Y" if passed else "N",
                "verification_request_number": f"SBX{record.seed % 10**9:09d}{n}",
            }
        elif method == "basic":
            result = {
                "strategy": "basic",
                "passed": passed,
                "checks": {"template_match": True, "expiry_in_future": True, "mrz": passed},
            }
        else:
            result = {"strategy": "idsp", "passed": passed, "assurance_level": "IP2"}
        out[f"document_{n}"] = {
            "ocr": ocr,
            "validation_result": result,
            "validation_data": {
                "given_name": p.first_name,
                "middle_name": p.middle_name,
                "family_name": p.last_name,
                "birth_date": p.date_of_birth,
                "document_number": doc.document_number,
                "card_number": doc.card_number,
                "issuer": doc.issuer,
            },
        }
    return out


def _logs(record: PassRecord, now: datetime) -> list[dict[str, Any]]:
    ip = record.persona.ip_address
    created = record.created_at
    end = record.completed_at or max(now, created)
    consent = record.consent_given_at
    logs = [{"timestamp": _ts(created), "ip": REQUESTER_IP, "event": "pass_registered"}]
    if record.status != "new" and (record.status != "cancelled" or consent is not None):
        opened = created + ((consent or end) - created) / 2
        logs.append({"timestamp": _ts(opened), "ip": ip, "event": "link_opened"})
    if consent is not None:
        logs.append({"timestamp": _ts(consent), "ip": ip, "event": "consent_given"})
        steps = []
        if "probe" in record.slots:
            steps.append("liveness_check_completed")
        for n in document_numbers(record):
            steps += [f"document_{n}_captured", f"document_{n}_validated"]
        if "id_photo" in record.slots:
            steps.append("id_photo_captured")
        span = (end - consent) / (len(steps) + 1)
        for i, event in enumerate(steps, 1):
            logs.append({"timestamp": _ts(consent + span * i), "ip": ip, "event": event})
    final = {
        "complete": ("pass_completed", ip),
        "failed": ("pass_failed", ip),
        "expired": ("link_expired", None),
        "cancelled": ("pass_cancelled", REQUESTER_IP),
    }.get(record.status)
    if final is not None and record.completed_at is not None:
        event, event_ip = final
        logs.append({"timestamp": _ts(record.completed_at), "ip": event_ip, "event": event})
    return logs


def _config(config: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    if isinstance(out.get("requested_identity"), dict):
        out["requested_identity"] = dict(out["requested_identity"])
    return out


def build_details(
    record: PassRecord,
    now: datetime,
    *,
    return_logs: bool = False,
    return_documents: bool = False,
    return_images: bool = False,
    corrupt_image: bool = False,
    missing: str = "mixed",
) -> dict[str, Any]:
    """The plaintext details document of ``record`` as read at ``now`` (the retention
    window is judged by ``now``)."""
    finished = record.status in _FINISHED
    opened = record.status != "new" and (
        record.status not in ("cancelled", "expired") or record.consent_given_at is not None
    )
    doc: dict[str, Any] = {
        "id": record.id,
        "status": record.status,
        "verification_status": record.verification_status,
        "verification_description": _description(record),
        "config": _config(record.config),
        "created_at": _ts(record.created_at),
        "consent_given_at": _ts(record.consent_given_at),
        "completed_at": _ts(record.completed_at),
        "consent_text": CONSENT_TEXT.format(
            requester=record.config.get("requester_name") or "the requester"
        ),
        "ip_address": record.persona.ip_address if opened else None,
        "validation_summary": _validation_summary(record),
        "verified_identity": _verified_identity(record.persona) if finished else None,
        "requested_identity_mismatch": record.requested_identity_mismatch if finished else None,
        "api_reference": record.api_reference,
    }
    if return_logs:
        doc["logs"] = _logs(record, now)
    if return_documents:
        doc["documents"] = _documents(record) if finished else {}
    if return_images:
        available = record.images_available(now)
        doc["images"] = (
            image_map(record, corrupt_first=corrupt_image, missing=missing) if available else {}
        )
    return doc


__all__ = ["build_details", "image_map", "missing_slots"]
