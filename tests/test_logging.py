import io
from datetime import UTC, datetime

import orjson
import structlog

from archiver.core.format import Layout
from archiver.logging import _BLOB, REDACTED, configure
from archiver.pipeline import new_run_id


def _capture(**event):
    buf = io.StringIO()
    configure("info", "json", buf)
    structlog.get_logger("t").info("something_happened", **event)
    return orjson.loads(buf.getvalue())


def test_json_lines_with_timestamp_and_level():
    """Off a terminal, each event is one JSON line with an ISO UTC timestamp and level."""
    line = _capture(pass_id="abc")
    assert line["event"] == "something_happened"
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")
    assert line["pass_id"] == "abc"


def test_personal_and_secret_fields_are_redacted():
    """Fields named like personal data or secrets are redacted whatever their value."""
    line = _capture(first_name="Quillon", cipher_key="k", date_of_birth="1970-01-01", token="t")
    assert line["first_name"] == line["cipher_key"] == line["date_of_birth"] == REDACTED
    assert line["token"] == REDACTED


def test_blob_like_values_are_masked_but_keys_and_hashes_kept():
    """Base64-looking runs are masked; S3 keys, UUIDs and hex digests survive."""
    blob = "IHm81bkcMsTL7J1ilxhDNE59+p5OQkvUJ3mZQhlUNHA="
    key = "idpass/passes/0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11/images/document_1_front.jpg"
    digest = "ab" * 32
    line = _capture(note=f"key was {blob} ok", s3_key=key, sha=digest)
    assert blob not in line["note"] and REDACTED in line["note"]
    assert line["s3_key"] == key
    assert line["sha"] == digest


def test_object_keys_with_day_folders_are_kept():
    """A run manifest's key (day folders, a timestamped run id) stays readable in the
    log; a Base64 blob with slashes and a day path in it is still masked."""
    now = datetime(2026, 11, 30, 7, 11, 56, tzinfo=UTC)
    key = Layout("compliance/idpass").run(new_run_id(now), now)
    assert _BLOB.search(key)  # a 40+ character run of Base64 characters
    blob = "a/b" + "Q" * 40 + "/2026/11/30/x"  # one part as long as a blob
    line = _capture(run_manifest_key=key, note=blob)
    assert line["run_manifest_key"] == key
    assert line["note"] != blob and REDACTED in line["note"]
