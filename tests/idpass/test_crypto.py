import base64
import os

import pytest

from archiver.errors import DecryptionError
from archiver.idpass import crypto


def test_round_trip_matches_documented_layout():
    """A value is Base64(nonce[12] || ciphertext || tag[16]) under AES-256-GCM."""
    key = crypto.new_key()
    raw = crypto.parse_key(key)
    token = crypto.encrypt_value(raw, b"hello", nonce=b"\x01" * 12)
    blob = base64.b64decode(token)
    assert blob[:12] == b"\x01" * 12
    assert len(blob) == 12 + 5 + 16
    assert crypto.decrypt_value(raw, token) == b"hello"


def test_wrong_key_is_a_clear_error():
    """Opening with another key fails with a reason, not a crash."""
    token = crypto.encrypt_value(crypto.parse_key(crypto.new_key()), b"x")
    with pytest.raises(DecryptionError, match="wrong cipher key"):
        crypto.decrypt_value(crypto.parse_key(crypto.new_key()), token)


@pytest.mark.parametrize("bad", ["", "###", base64.b64encode(os.urandom(16)).decode()])
def test_bad_keys_are_rejected_without_echo(bad):
    """A malformed key is rejected and never echoed."""
    with pytest.raises(DecryptionError) as info:
        crypto.parse_key(bad)
    assert bad == "" or bad not in str(info.value)


def test_response_round_trip_covers_the_sensitive_fields():
    """encrypt_response seals the sensitive fields; decrypt_response restores them."""
    key = crypto.new_key()
    jpeg = b"\xff\xd8abc\xff\xd9"
    doc = {
        "id": "p",
        "status": "complete",
        "verified_identity": {"first_name": "Zed", "nested": ["Q"]},
        "ip_address": "203.0.113.1",
        "config": {"image_retention_days": 3, "requested_identity": {"last_name": "Y"}},
        "images": {"probe": base64.b64encode(jpeg).decode(), "id_photo": None},
    }
    enc = crypto.encrypt_response(doc, key)
    assert crypto.is_encrypted(enc)
    assert enc["verified_identity"]["first_name"] != "Zed"
    assert enc["config"]["image_retention_days"] == 3
    assert enc["images"]["id_photo"] is None
    assert crypto.decrypt_response(enc, key) == doc
