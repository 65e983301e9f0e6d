"""End to end: the real sandbox over HTTP → the pipeline → a real SeaweedFS S3 server."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from archiver.catalog import Outcome
from tests.fixtures.cli import TEST_SIGNER

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "config" / "schemas" / "pass-manifest.v2.schema.json").read_text()
)


@pytest.fixture
def archived(s3_harness):
    """A mixed set of passes archived once into a fresh bucket."""
    h = s3_harness
    now = datetime.now(UTC)
    ids = {
        "full": [p["id"] for p in h.seed(count=3, image_retention_days=30)],
        "sparse": [p["id"] for p in h.seed(image_retention_days=3, slots=["probe"])],
        "zero": [p["id"] for p in h.seed(count=2, image_retention_days=0)],
        "expired": [
            p["id"]
            for p in h.seed(
                count=2,
                image_retention_days=1,
                completed_at=(now - timedelta(days=3)).isoformat().replace("+00:00", "Z"),
            )
        ],
    }
    h.import_ledger()
    summary = h.run()
    return h, ids, summary


def _manifests(h, client, bucket, pass_ids):
    out = {}
    for pid in pass_ids:
        body = client.get_object(Bucket=bucket, Key=h.layout.manifest(pid))["Body"].read()
        out[pid] = (body, json.loads(body))
    return out


def test_every_image_matches_sandbox_and_manifest(archived, seaweedfs, s3_bucket):
    """Every archived image equals the sandbox's bytes and its manifest SHA-256."""
    h, ids, summary = archived
    client = seaweedfs.client()
    archived_ids = ids["full"] + ids["sparse"]
    assert {r.pass_id for r in summary.results if r.outcome is Outcome.ARCHIVED} == set(
        archived_ids
    )
    n = 0
    for pid, (_, doc) in _manifests(h, client, s3_bucket, archived_ids).items():
        for o in doc["objects"]:
            body = client.get_object(Bucket=s3_bucket, Key=o["key"], VersionId=o["version_id"])[
                "Body"
            ].read()
            assert hashlib.sha256(body).hexdigest() == o["sha256"]
            assert len(body) == o["size"]
            if o["role"] == "image":
                assert body == h.image(pid, o["slot"])
                n += 1
    assert n == 3 * 6 + 1


def test_every_object_is_kms_encrypted_with_checksum(archived, seaweedfs, s3_bucket):
    """HEAD shows aws:kms with the configured key and a SHA-256 checksum on every object."""
    client = seaweedfs.client()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    # per pass: images + record, SHA256SUMS, manifest.json, manifest.json.sig
    assert len(keys) == 3 * (6 + 4) + (1 + 4)
    for key in keys:
        head = client.head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED")
        assert head["ServerSideEncryption"] == "aws:kms", key
        assert "archive-key" in head.get("SSEKMSKeyId", ""), key
        assert head.get("ChecksumSHA256"), key


def test_manifests_validate_against_published_schema(archived, seaweedfs, s3_bucket):
    """Each manifest validates against the published schema and its detached signature
    verifies over its exact bytes."""
    h, ids, _ = archived
    client = seaweedfs.client()
    verifier = TEST_SIGNER.verifier
    for _, (body, doc) in _manifests(h, client, s3_bucket, ids["full"] + ids["sparse"]).items():
        jsonschema.validate(doc, SCHEMA)
        assert doc["signing"] == {"algorithm": "ed25519", "key_id": verifier.key_id}
        sig_key = h.layout.manifest(doc["pass_id"]) + ".sig"
        sig = client.get_object(Bucket=s3_bucket, Key=sig_key)["Body"].read()
        assert verifier.verify(body, sig)
        assert not verifier.verify(body + b" ", sig)


def test_rerun_archives_nothing_new_and_changes_no_object(archived, seaweedfs, s3_bucket):
    """A rerun (and a forced re-check) adds no version and changes no object."""
    h, ids, _ = archived
    before = seaweedfs.versions_per_key(s3_bucket)
    assert set(before.values()) == {1}
    again = h.run()
    assert again.results == []
    forced = h.run(pass_ids=ids["full"] + ids["sparse"])
    assert all(r.already_archived for r in forced.results)
    assert seaweedfs.versions_per_key(s3_bucket) == before


def test_retention_zero_and_expired_have_outcomes_and_no_objects(archived, seaweedfs, s3_bucket):
    """Retention-0 and expired passes get their outcomes and nothing in the bucket."""
    h, ids, summary = archived
    got = {r.pass_id: r.outcome for r in summary.results}
    client = seaweedfs.client()
    for pid in ids["zero"]:
        assert got[pid] is Outcome.NO_IMAGES
    for pid in ids["expired"]:
        assert got[pid] is Outcome.EXPIRED
    for pid in ids["zero"] + ids["expired"]:
        listing = client.list_objects_v2(Bucket=s3_bucket, Prefix=h.layout.pass_dir(pid))
        assert listing.get("KeyCount", 0) == 0


def test_absent_slots_recorded_as_missing(archived, seaweedfs, s3_bucket):
    """A pass with one image lists the eleven other slots as missing and is archived."""
    h, ids, summary = archived
    [pid] = ids["sparse"]
    _, doc = _manifests(h, seaweedfs.client(), s3_bucket, [pid])[pid]
    assert doc["image_count"] == 1 and len(doc["absent_slots"] + doc["null_slots"]) == 11
    assert [r.reason for r in summary.results if r.pass_id == pid] == [None]
