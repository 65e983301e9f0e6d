"""The sandbox's own statement of the ID Pass wire facts it serves: slots, statuses,
timestamps and the HTTP ``Date`` header.

Deliberately not imported from the archiver's client (``archiver.idpass``): the
sandbox plays the other side of the wire, so a wrong guess on the client's side
shows up as a failing test instead of being shared by both sides.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

#: The twelve image slots of a pass, in the order the API lists them.
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
#: Every status a pass can have.
STATUSES: tuple[str, ...] = (
    "new",
    "opened",
    "in_progress",
    "complete",
    "expired",
    "failed",
    "cancelled",
)
#: Statuses a pass never leaves.
TERMINAL_STATUSES = frozenset({"complete", "expired", "failed", "cancelled"})


def timestamp(ts: datetime) -> str:
    """A wire timestamp: ISO 8601 in UTC with a ``Z`` suffix."""
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def http_date(ts: datetime) -> str:
    """An HTTP ``Date`` header value (IMF-fixdate, RFC 9110)."""
    return format_datetime(ts.astimezone(UTC), usegmt=True)


__all__ = ["SLOTS", "STATUSES", "TERMINAL_STATUSES", "http_date", "timestamp"]
