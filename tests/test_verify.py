"""`verify` against a real SeaweedFS: clean archives pass, every tamper is named."""

from __future__ import annotations

import hashlib
import json
import re
import socket

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
    doc["reads"] = 7
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
    assert {f["kind"] for f in doc["findings"]} == {"unlocked", "no_retention"}
    assert doc["finding_counts"]["unlocked"] == doc["objects_checked"]
    # the objects no pass manifest lists: manifest and run manifest, each with its
    # signature, and the public key copy
    unlisted = {f["key"].rsplit("/", 1)[-1] for f in doc["findings"] if f["kind"] == "no_retention"}
    assert {"manifest.json", "manifest.json.sig"} <= unlisted
    assert any(k.endswith(".pub.pem") for k in unlisted)
    assert doc["finding_counts"]["no_retention"] == 5


@pytest.fixture
def one_pass(cli_config, sandbox_http, tmp_path):
    """An archive of one pass written by one CLI run, in the shape of ``audited``."""
    cfg, env = cli_config
    ids = archive_with_cli(cfg, env, sandbox_http, passes_per_run=1)
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    return cfg, {k: v for k, v in env.items() if k.startswith("AWS_")}, ids, pub


def _unreachable(cfg):
    """A copy of the config whose S3 endpoint is a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    text = re.sub(
        r'endpoint_url = "[^"]*"', f'endpoint_url = "http://127.0.0.1:{port}"', cfg.read_text()
    )
    refused = cfg.with_name("unreachable.toml")
    refused.write_text(text)
    return refused


# what goes wrong: (how it changes the auditor's env and config, what stderr must name)
UNASKABLE = {
    "wrong secret": (
        lambda env, cfg: ({**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}, cfg),
        ("store_access_denied", "SignatureDoesNotMatch"),
    ),
    "no secret": (
        lambda env, cfg: ({**env, "AWS_SECRET_ACCESS_KEY": ""}, cfg),
        ("store_access_denied", "PartialCredentialsError"),
    ),
    "no credentials": (
        lambda env, cfg: (
            {
                "AWS_ACCESS_KEY_ID": "",
                "AWS_SECRET_ACCESS_KEY": "",
                "AWS_SESSION_TOKEN": "",
                "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": str(cfg.with_name("no-aws-config")),
                "AWS_SHARED_CREDENTIALS_FILE": str(cfg.with_name("no-aws-credentials")),
            },
            cfg,
        ),
        ("store_access_denied", "NoCredentialsError"),
    ),
    "endpoint refused": (
        lambda env, cfg: (env, _unreachable(cfg)),
        ("store_unavailable", "EndpointConnectionError"),
    ),
}


@pytest.mark.parametrize("failure", list(UNASKABLE))
def test_a_store_that_cannot_be_asked_is_exit_3_and_no_finding(one_pass, failure):
    """Defect 4: a store verify cannot read (credentials refused or absent, nothing
    listening) is no evidence about the archive. `--pass` used to report the manifest
    `missing` (exit 1, which reads as tampering) while `--all` named the store error;
    now both end with exit 3, the store error on stderr and no report on stdout."""
    cfg, env, [pid], pub = one_pass
    change, names = UNASKABLE[failure]
    env, cfg = change(env, cfg)
    for scope in (["--pass", pid], ["--all"]):
        proc = run_cli(
            ["verify", "--config", str(cfg), "--public-key", str(pub), "--json", *scope], env=env
        )
        assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
        assert proc.returncode == 3, (scope, proc.stdout, proc.stderr)
        assert all(name in proc.stderr for name in names), (scope, proc.stderr)
        assert "not verified" in proc.stderr
        assert proc.stdout == ""  # no report, so no finding
        assert "missing" not in proc.stderr


def test_a_deleted_manifest_is_still_a_missing_finding(one_pass, seaweedfs, s3_bucket):
    """The converse: a manifest really deleted (a delete marker over it) is a `missing`
    finding, exit 1; a deleted signature beside an intact manifest is `unsigned`."""
    _, _, [pid], _ = one_pass
    manifest = _key("cli", pid, "manifest.json")
    seaweedfs.client().delete_object(Bucket=s3_bucket, Key=manifest + ".sig")
    code, doc = _verify(one_pass, "--pass", pid)
    assert code == 1
    assert [(f["kind"], f["key"]) for f in doc["findings"]] == [("unsigned", manifest)]
    seaweedfs.client().delete_object(Bucket=s3_bucket, Key=manifest)
    code, doc = _verify(one_pass, "--pass", pid)
    assert code == 1
    assert [(f["kind"], f["key"], f["pass_id"]) for f in doc["findings"]] == [
        ("missing", manifest, pid)
    ]
