"""Validation shared by every source: one pass id, key, time and retention rule set.

Each parser takes the raw value a source produced (a string from a file, or a
native value from a database driver) and returns the canonical value or raises
``ValueError`` with a reason that names the field and never echoes the value.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple

from archiver.errors import DecryptionError
from archiver.idpass.crypto import parse_key

MAX_RETENTION_DAYS = 5000


class Rejection(NamedTuple):
    """A record a source could not use: where it was (line or row number) and why."""

    row: int
    reason: str


def normalise_pass_id(raw: Any) -> str:
    """A canonical lowercase UUID string, or ValueError."""
    if isinstance(raw, uuid.UUID):
        return str(raw)
    if not isinstance(raw, str):
        raise ValueError("id is not a string")
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        raise ValueError("id is not a UUID") from None


def parse_timestamp(
    raw: Any, field: str, *, naive: Literal["reject", "utc"] = "reject"
) -> datetime | None:
    """An aware UTC datetime from an ISO 8601 string or a driver's datetime.

    ``naive="reject"`` refuses a time without a timezone (files: the writer must say);
    ``naive="utc"`` takes it as UTC (databases: ``timestamp without time zone``
    columns and SQLite text are read as UTC).
    """
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        ts = raw
    elif isinstance(raw, str):
        try:
            ts = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{field} is not an ISO 8601 timestamp") from None
    else:
        raise ValueError(f"{field} is not a timestamp")
    if ts.tzinfo is None:
        if naive == "reject":
            raise ValueError(f"{field} has no timezone")
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def parse_retention(raw: Any) -> int | None:
    """Days of image retention, 0..5000, from an integer or its text."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, bool):
        raise ValueError("image_retention_days is not an integer")
    try:
        days = int(raw)
        if isinstance(raw, float | Decimal) and days != raw:
            raise ValueError("fractional")
    except (TypeError, ValueError, ArithmeticError):
        raise ValueError("image_retention_days is not an integer") from None
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"image_retention_days is outside 0..{MAX_RETENTION_DAYS}")
    return days


def parse_cipher_key(raw: Any) -> str | None:
    """A cipher key checked to be Base64 of 32 bytes; the reason never echoes it."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise ValueError("cipher_key is not a string")
    key = raw.strip()
    try:
        parse_key(key)
    except DecryptionError as exc:
        raise ValueError(str(exc)) from None
    return key
