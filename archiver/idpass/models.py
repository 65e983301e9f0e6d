"""Typed models of the ID Pass wire shape. Every guess about field names lives here.

The public API pages list the data points but not the exact JSON nesting. The
project's guesses:

* the details response is a JSON object at top level; if it is wrapped as
  ``{"data": {...}}`` the wrapper is removed (:func:`unwrap`);
* the original registration settings sit under ``config``;
* images sit under ``images`` as ``{slot: Base64 JPEG | null}`` with the twelve
  slots of :data:`SLOTS`; any slot may be absent or null.

Unknown extra fields are kept (``extra="allow"``), never rejected. ``repr`` shows
only non-personal fields, so a model printed in a log or traceback leaks nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
            raise ValueError(f"unknown status {v[:20]!r}")
        return v

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
