"""The archive format's keys and readers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from archiver.core.format import Layout, RunManifest, chain_link_of
from archiver.errors import FormatError

PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"


def test_keys_of_a_pass_and_a_run():
    lay = Layout("/archive/")
    assert lay.image(PID, "selfie") == f"archive/passes/{PID}/images/selfie.jpg"
    assert lay.image(PID, "selfie", sealed=True).endswith("/images/selfie.jpg.aes256gcm")
    assert (
        lay.run("r1", datetime(2026, 1, 2, 23, 0, tzinfo=UTC)) == "archive/runs/2026/01/02/r1.json"
    )
    assert lay.manifest_pass_id(lay.manifest(PID)) == PID
    assert lay.manifest_pass_id(f"archive/passes/{PID}/images/manifest.json") is None
    assert lay.manifest_pass_id(lay.record(PID)) is None


@pytest.mark.parametrize(
    "key",
    [
        "archive/passes/other/record.json",
        f"archive/passes/{PID}/",
        f"archive/passes/{PID}/images/../../../etc/passwd",
        f"archive/passes/{PID}/images//selfie.jpg",
        f"archive/passes/{PID}/./record.json",
    ],
)
def test_a_key_outside_the_pass_directory_is_a_format_error(key):
    """export writes each listed key under the auditor's directory: a manifest that
    lists a key elsewhere, or one with ``..``, is refused as a format error."""
    with pytest.raises(FormatError, match="outside its directory"):
        Layout("archive").relative(PID, key)


def test_a_run_manifest_of_an_unknown_version_is_refused():
    with pytest.raises(FormatError, match="run_manifest_version 7"):
        RunManifest.parse(b'{"run_manifest_version": 7}')
    with pytest.raises(FormatError, match="not valid JSON"):
        RunManifest.parse(b"{")


def test_the_lenient_chain_reader_never_raises():
    assert chain_link_of(b"not json") == (None, None)
    assert chain_link_of(b"[1]") == (None, None)
    chain, link = chain_link_of(b'{"chain_id": "main", "previous": {"key": "k", "sha256": "s"}}')
    assert chain == "main" and link is not None and (link.key, link.sha256) == ("k", "s")
