"""The validation rules every source shares, over text and native driver values."""

import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from archiver.idpass.crypto import new_key
from archiver.sources.records import (
    normalise_pass_id,
    parse_cipher_key,
    parse_retention,
    parse_timestamp,
)

A = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"


def test_pass_ids_from_text_or_native_uuid():
    """Ids are canonical lowercase UUIDs whether a driver gives text or a UUID object."""
    assert normalise_pass_id(f"  {A.upper()} ") == A
    assert normalise_pass_id(uuid.UUID(A)) == A
    with pytest.raises(ValueError, match=r"^id is not a UUID$"):
        normalise_pass_id("Quillon-Marrowby")
    with pytest.raises(ValueError, match=r"^id is not a string$"):
        normalise_pass_id(12)


def test_timestamps_from_text_or_datetime_in_utc():
    """Times become aware UTC; naive ones are refused or taken as UTC as the caller says."""
    plus10 = timezone(timedelta(hours=10))
    expected = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert parse_timestamp("2026-01-01T10:00:00+10:00", "completed_at") == expected
    assert parse_timestamp(datetime(2026, 1, 1, 10, tzinfo=plus10), "completed_at") == expected
    assert parse_timestamp(datetime(2026, 1, 1), "t", naive="utc") == expected
    assert parse_timestamp("2026-01-01 00:00:00", "t", naive="utc") == expected
    assert parse_timestamp(None, "t") is None and parse_timestamp("", "t") is None
    with pytest.raises(ValueError, match=r"^completed_at has no timezone$"):
        parse_timestamp("2026-01-01T00:00:00", "completed_at")
    with pytest.raises(ValueError, match=r"^updated_at is not a timestamp$"):
        parse_timestamp(1767225600, "updated_at", naive="utc")


def test_retention_accepts_whole_numbers_only():
    """Retention is 0..5000 from int, integral Decimal or text; fractions and bools are refused."""
    assert parse_retention(30) == 30
    assert parse_retention(Decimal("30")) == 30
    assert parse_retention("7") == 7
    assert parse_retention(None) is None
    for bad in (7.5, Decimal("7.5"), True, "seven", Decimal("NaN"), float("inf")):
        with pytest.raises(ValueError, match=r"^image_retention_days is not an integer$"):
            parse_retention(bad)
    with pytest.raises(ValueError, match=r"outside 0\.\.5000"):
        parse_retention(5001)


def test_cipher_keys_are_checked_without_echoing_them():
    """A key must be Base64 of 32 bytes; the reason never contains the key."""
    key = new_key()
    assert parse_cipher_key(f" {key}\n") == key
    assert parse_cipher_key(None) is None
    with pytest.raises(ValueError) as info:
        parse_cipher_key("c2hvcnQ=")
    assert "c2hvcnQ" not in str(info.value)
    with pytest.raises(ValueError, match=r"^cipher_key is not a string$"):
        parse_cipher_key(b"bytes")
