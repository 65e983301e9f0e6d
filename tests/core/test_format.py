"""The archive format's keys and readers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from archiver.catalog import Outcome, UnlistedPass
from archiver.core.format import Layout, RunManifest, chain_link_of
from archiver.core.manifest import canonical_json
from archiver.core.runlog import build_run_manifest, run_manifest_bytes
from archiver.errors import FormatError
from archiver.results import PassResult, RunSummary

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


def _run_doc(recovered: list[UnlistedPass]) -> dict:
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    summary = RunSummary(run_id="r1", started_at=t0, finished_at=t0, worker_id="w")
    for pid, sha in (("p-b", "b" * 64), ("p-own", "c" * 64)):
        summary.add(PassResult(pid, Outcome.ARCHIVED, manifest_key=f"k/{pid}", manifest_sha256=sha))
    return build_run_manifest(
        summary,
        chain_id="main",
        archiver_version="0",
        config_fingerprint="f" * 64,
        previous_key=None,
        previous_sha256=None,
        signing_key_id="0" * 16,
        recovered=recovered,
    )


def test_a_run_manifest_lists_recovered_passes_after_its_own():
    """Version 2: the run's own passes, then passes earlier runs committed and listed
    nowhere, marked recovered (a pass the run lists as its own is not listed again)."""
    doc = _run_doc(
        [UnlistedPass("p-a", "k/p-a", "a" * 64), UnlistedPass("p-own", "k/p-own", "c" * 64)]
    )
    data, _ = run_manifest_bytes(doc)  # validated against the v2 schema
    run = RunManifest.parse(data)
    assert run.run_manifest_version == 2
    assert [(p.pass_id, p.already_archived, p.recovered) for p in run.passes] == [
        ("p-b", False, False),
        ("p-own", False, False),
        ("p-a", True, True),
    ]


def test_a_version_1_run_manifest_still_reads():
    doc = _run_doc([])
    doc["run_manifest_version"] = 1
    for p in doc["passes"]:
        del p["recovered"]
    run = RunManifest.parse(canonical_json(doc))
    assert run.run_manifest_version == 1
    assert [p.recovered for p in run.passes] == [False, False]
    # a v1 document with v2's field is not a v1 run manifest
    doc["passes"][0]["recovered"] = True
    with pytest.raises(FormatError, match="schema at passes/0"):
        RunManifest.parse(canonical_json(doc))
    # nor a v2 document without it
    doc["run_manifest_version"] = 2
    del doc["passes"][0]["recovered"]
    with pytest.raises(FormatError, match="schema at passes/0"):
        RunManifest.parse(canonical_json(doc))
