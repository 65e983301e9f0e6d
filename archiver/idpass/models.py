"""Typed models of the ID Pass wire shape. Every guess about field names lives here.

The public API pages list the data points but not the exact JSON nesting. The
project's guesses:

* the details response is a JSON object at top level; if it is wrapped as
  ``{"data": {...}}`` the wrapper is removed (:func:`unwrap`);
* the original registration settings sit under ``config``;
* images sit under ``images`` as ``{slot: Base64 JPEG | null}`` with the twelve
  slots of :data:`SLOTS`; any slot may be absent or null.

Variants the client also accepts, each a guess of how another version of the API,
or a proxy in front of it, might write the same answer:

* an image as a data URI, ``"data:image/jpeg;base64,/9j/…"``: the prefix
  (:data:`DATA_URI`) is removed before Base64 decoding (:func:`strip_data_uri`);
* ``images`` as a list of ``{"slot": name, "data": Base64 | null}`` objects
  (:data:`IMAGE_LIST_KEYS`) instead of an object; a slot named twice is refused;
* an HTTP 200 answer that is an error envelope, ``{"error": {"code": …,
  "message": …}}`` with no pass field (:func:`error_envelope_code`): an API error
  classed by its code as the HTTP status it names would be (:data:`ERROR_CODE_STATUS`;
  any other code counts as a server error, retried), exactly as a 4xx/5xx answer's
  ``error.code`` is read. The ``message`` is never read.

Bounds, guesses too (both can be changed per client): at most :data:`MAX_SLOTS`
slots in one answer, null ones included (twice the known twelve, room for new
slots, far below the 500 of a broken or hostile answer), and at most
:data:`MAX_RECORD_BYTES` of record (the answer without its images, counted as
the raw JSON bytes of its fields): the registration settings and verification
results are a few KB.

Text the API controls reaches messages only through
:func:`archiver.errors.safe_token`; ``verification_status``, which the pass manifest
records, is kept only when it is such a token (the raw value stays in the record).
Unknown extra fields are kept (``extra="allow"``), never rejected. ``repr`` shows
only non-personal fields, so a model printed in a log or traceback leaks nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from archiver.errors import safe_token

SLOTS: tuple[str, ...] = (
    "probe",
    "document_1_front",
    "document_1_back",
    "document_1_photo",
    "document_2_front",
    "document_2_back",
    "document_2_photo",
    "document_3_front",
    "document_3_back",
    "document_3_photo",
    "id_photo",
    "id_photo_cropped",
)

STATUSES: tuple[str, ...] = (
    "new",
    "opened",
    "in_progress",
    "complete",
    "expired",
    "failed",
    "cancelled",
)
TERMINAL_STATUSES = frozenset({"complete", "expired", "failed", "cancelled"})
IMAGES_FIELD = "images"
ERROR_FIELD = "error"

#: Image slots accepted in one answer, null ones included.
MAX_SLOTS = 2 * len(SLOTS)
#: Bytes of record accepted in one answer (its raw JSON fields, images excluded).
MAX_RECORD_BYTES = 1024 * 1024

#: ``data:image/<type>;base64,`` in front of an image's Base64 (case as written).
DATA_URI = re.compile(rb"data:image/[A-Za-z0-9.+-]{1,32};base64,")
#: The keys of one entry of ``images`` written as a list.
IMAGE_LIST_KEYS = ("slot", "data")

#: Error codes (HTTP 200 envelope or error body) and the HTTP status each means.
ERROR_CODE_STATUS: dict[str, int] = {
    "bad_request": 400,
    "invalid_request": 400,
    "invalid_id": 400,
    "validation_error": 400,
    "unauthorized": 401,
    "unauthenticated": 401,
    "invalid_token": 401,
    "forbidden": 403,
    "not_found": 404,
    "pass_not_found": 404,
    "rate_limited": 429,
    "too_many_requests": 429,
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    _safe_repr: tuple[str, ...] = ()

    def __repr_args__(self) -> Any:  # hide personal fields and unknown extras
        for name in self._safe_repr:
            yield name, getattr(self, name, None)


class PassConfig(_Model):
    """The settings the pass was registered with (echoed by details)."""

    link_validity_days: int | None = None
    image_retention_days: int | None = Field(default=None, ge=0, le=5000)
    check_liveness: bool | None = None
    document_verification: str | None = None
    requested_identity: Any = None
    requester_name: str | None = None

    _safe_repr = ("link_validity_days", "image_retention_days", "document_verification")


class PassDetails(_Model):
    """The non-image part of a details response."""

    id: str
    status: str
    verification_status: str | None = None
    verification_description: str | None = None
    config: PassConfig | None = None
    created_at: datetime | None = None
    consent_given_at: datetime | None = None
    completed_at: datetime | None = None
    requested_identity_mismatch: bool | None = None
    verified_identity: Any = None
    ip_address: Any = None

    _safe_repr = ("id", "status", "verification_status", "completed_at")

    @field_validator("status")
    @classmethod
    def _known_status(cls, v: str) -> str:
        if v not in STATUSES:
            raise ValueError("unknown status")  # never the value: the API wrote it
        return v

    @field_validator("verification_status")
    @classmethod
    def _token_verification(cls, v: str | None) -> str | None:
        return None if v is None else safe_token(v)

    @field_validator("created_at", "consent_given_at", "completed_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("timestamp has no timezone")
        return v

    @property
    def image_retention_days(self) -> int | None:
        return self.config.image_retention_days if self.config else None

    @property
    def link_validity_days(self) -> int | None:
        return self.config.link_validity_days if self.config else None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


ENVELOPE_FIELD = "data"


def is_envelope(outer: Mapping[str, Any], inner: Mapping[str, Any]) -> bool:
    """Whether ``outer`` is a ``{"data": inner}`` envelope around a pass (``inner`` is the
    object under ``data``): a few fields around one that looks like a pass."""
    return len(outer) <= 3 and ("id" in inner or "status" in inner)


def unwrap(doc: Any) -> Any:
    """Remove a ``{"data": {...}}`` envelope if the API uses one."""
    inner = doc.get(ENVELOPE_FIELD) if isinstance(doc, dict) else None
    return inner if isinstance(inner, dict) and is_envelope(doc, inner) else doc


def error_code(doc: Any) -> str | None:
    """``error.code`` of an error answer (or a bare ``error`` string), unchecked:
    the caller passes it through :func:`~archiver.errors.safe_token`."""
    err = doc.get(ERROR_FIELD) if isinstance(doc, dict) else None
    code = err.get("code") if isinstance(err, dict) else err
    return code if isinstance(code, str) else None


def is_error_envelope(doc: Any) -> bool:
    """An answer that is an ``{"error": …}`` envelope and no pass (no id, no status)."""
    return (
        isinstance(doc, dict)
        and doc.get(ERROR_FIELD) is not None
        and "id" not in doc
        and "status" not in doc
    )


def error_envelope_code(doc: Any) -> str | None:
    """The code of an HTTP 200 error envelope (``""`` when it has none), or None
    when ``doc`` is not one."""
    if not is_error_envelope(doc):
        return None
    return error_code(doc) or ""


def strip_data_uri(text: Any) -> Any:
    """An image's Base64 without a ``data:image/…;base64,`` prefix, as a view when
    ``text`` is bytes or a view (the usual case costs one 5-byte comparison)."""
    if isinstance(text, str):
        if text.startswith("data:"):
            found = DATA_URI.match(text[:64].encode("latin-1", "replace"))
            return text[found.end() :] if found else text
        return text
    if isinstance(text, bytes | memoryview) and bytes(text[:5]) == b"data:":
        found = DATA_URI.match(bytes(text[:64]))
        return memoryview(text)[found.end() :] if found else text
    return text
