"""`verify` against a real SeaweedFS: clean archives pass, every tamper is named."""

from __future__ import annotations

import hashlib
import json

import botocore.exceptions
import pytest

from archiver.core.signing import Signer
from tests.fixtures.cli import TEST_SIGNER, archive_with_cli, run_cli

RUNS = 3


@pytest.fixture
def audited(cli_config, sandbox_http, tmp_path):
    """An archive written by three CLI runs (two passes each) with COMPLIANCE lock."""
    cfg, env = cli_config
    cfg.write_text(cfg.read_text() + '\n[object_lock]\nmode = "COMPLIANCE"\nretain_days = 1\n')
    ids = archive_with_cli(cfg, env, sandbox_http, runs=RUNS)
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    # The auditor has read access and the public key: no token, no signing key.
    auditor_env = {k: v for k, v in env.items() if k.startswith("AWS_")}
    return cfg, auditor_env, ids, pub


def _verify(audited, *extra):
    cfg, env, _, pub = audited
    proc = run_cli(
        ["verify", "--config", str(cfg), "--public-key", str(pub), "--json", *extra], env=env
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def _kinds(doc, key_part):
    return {f["kind"] for f in doc["findings"] if key_part in f["key"]}


def _key(cfg_prefix, pid, rel):
    return f"{cfg_prefix}/passes/{pid}/{rel}"


def test_untouched_archive_verifies_clean_also_deep(audited):
    """An untouched archive verifies clean, shallow and deep, with the public key alone."""
    code, doc = _verify(audited)
    assert (code, doc["findings"]) == (0, [])
    assert doc["passes_checked"] == 2 * RUNS
    assert doc["objects_checked"] == 2 * RUNS * 4  # 2 images, record, SHA256SUMS
    assert doc["run_manifests_checked"] == RUNS
    code, doc = _verify(audited, "--deep")
    assert code == 0 and doc["bytes_hashed"] > 0


def test_flipped_byte_in_an_image_is_found(audited, seaweedfs, s3_bucket):
    """An image rewritten with one byte flipped is reported under its key."""
    _, _, ids, _ = audited
    client = seaweedfs.client()
    key = _key("cli", ids[0], "images/probe.jpg")
    body = bytearray(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    client.put_object(
        Bucket=s3_bucket,
        Key=key,
        Body=bytes(body),
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId="archive-key",
    )
    code, doc = _verify(audited)
    assert code == 1
    assert "replaced" in _kinds(doc, key)


def test_manifest_resigned_under_another_key_is_found(audited, seaweedfs, s3_bucket):
    """A manifest altered and re-signed with another key fails its signature check."""
    _, _, ids, _ = audited
    client = seaweedfs.client()
    key = _key("cli", ids[1], "manifest.json")
    doc = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    doc["missing_slots"] = []
    forged = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    other = Signer.generate()
    for k, body in ((key, forged), (key + ".sig", other.sign(forged))):
        client.put_object(
            Bucket=s3_bucket,
            Key=k,
            Body=body,
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId="archive-key",
        )
    code, report = _verify(audited)
    assert code == 1
    assert "bad_signature" in _kinds(report, key)


def test_deleted_image_is_found(audited, seaweedfs, s3_bucket):
    """An image deleted (a delete marker over the locked version) is reported."""
    _, _, ids, _ = audited
    key = _key("cli", ids[2], "images/id_photo.jpg")
    seaweedfs.client().delete_object(Bucket=s3_bucket, Key=key)
    code, doc = _verify(audited)
    assert code == 1
    assert "deleted" in _kinds(doc, key)


def test_run_manifest_deleted_from_the_middle_of_the_chain_is_found(audited, seaweedfs, s3_bucket):
    """Deleting the middle run manifest breaks the chain, and verify names it."""
    client = seaweedfs.client()
    runs = sorted(
        o["Key"]
        for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="cli/runs/")["Contents"]
        if o["Key"].endswith(".json")
    )
    assert len(runs) == RUNS
    docs = {k: json.loads(client.get_object(Bucket=s3_bucket, Key=k)["Body"].read()) for k in runs}
    ordered = sorted(runs, key=lambda k: docs[k]["started_at"])
    middle = ordered[1]
    assert docs[ordered[2]]["previous"]["key"] == middle
    client.delete_object(Bucket=s3_bucket, Key=middle)
    code, doc = _verify(audited)
    assert code == 1
    assert "chain_broken" in _kinds(doc, middle)


def test_unencrypted_copies_are_found(audited, seaweedfs, s3_bucket):
    """An unencrypted copy uploaded beside or over an image is reported as such."""
    _, _, ids, _ = audited
    client = seaweedfs.client()
    src = _key("cli", ids[3], "images/probe.jpg")
    body = client.get_object(Bucket=s3_bucket, Key=src)["Body"].read()
    extra = _key("cli", ids[3], "images/probe-copy.jpg")
    client.put_object(Bucket=s3_bucket, Key=extra, Body=body)
    over = _key("cli", ids[4], "images/probe.jpg")
    client.put_object(Bucket=s3_bucket, Key=over, Body=body)
    code, doc = _verify(audited)
    assert code == 1
    assert {"orphan", "unencrypted"} <= _kinds(doc, extra)
    assert {"replaced", "unencrypted"} <= _kinds(doc, over)


def test_compliance_lock_refuses_deleting_an_archived_version(audited, seaweedfs, s3_bucket):
    """With COMPLIANCE Object Lock the server refuses to delete an archived version."""
    _, _, ids, _ = audited
    client = seaweedfs.client()
    key = _key("cli", ids[5], "images/probe.jpg")
    head = client.head_object(Bucket=s3_bucket, Key=key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key=_key("cli", ids[5], "manifest.json"))["Body"].read()
    )
    [entry] = [o for o in manifest["objects"] if o["key"] == key]
    assert entry["lock_mode"] == "COMPLIANCE" and entry["version_id"] == head["VersionId"]
    with pytest.raises(botocore.exceptions.ClientError) as info:
        client.delete_object(Bucket=s3_bucket, Key=key, VersionId=head["VersionId"])
    assert info.value.response["Error"]["Code"] == "AccessDenied"
    body = client.get_object(Bucket=s3_bucket, Key=key, VersionId=head["VersionId"])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_verify_single_pass_and_run_and_sample(audited):
    """--pass, --run and --sample narrow the check and stay clean on an intact archive."""
    _, _, ids, _ = audited
    code, doc = _verify(audited, "--pass", ids[0])
    assert code == 0 and doc["passes_checked"] == 1
    code, doc = _verify(audited, "--sample", "50", "--seed", "7")
    assert code == 0 and doc["passes_checked"] == RUNS


def test_verify_without_a_key_is_a_usage_error(audited):
    """verify refuses to run without a trusted public key."""
    cfg, env, _, _ = audited
    proc = run_cli(["verify", "--config", str(cfg)], env=env)
    assert proc.returncode == 2 and "--public-key" in proc.stderr


def test_objects_without_required_retention_are_reported_unlocked(
    cli_config, sandbox_http, tmp_path
):
    """An archive written without Object Lock fails verify once the config requires it."""
    cfg, env = cli_config
    sandbox_http.post("/_sandbox/passes", json={"image_retention_days": 9, "slots": ["probe"]})
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert run_cli(["run", "--config", str(cfg)], env=env).returncode == 0
    pub = tmp_path / "pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    audit = {k: v for k, v in env.items() if k.startswith("AWS_")}
    args = ["verify", "--config", str(cfg), "--public-key", str(pub), "--json"]
    assert run_cli(args, env=audit).returncode == 0
    cfg.write_text(cfg.read_text() + '\n[object_lock]\nmode = "GOVERNANCE"\n')
    proc = run_cli(args, env=audit)
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert {f["kind"] for f in doc["findings"]} == {"unlocked"}
    assert doc["finding_counts"]["unlocked"] == doc["objects_checked"]
