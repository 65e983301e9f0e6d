"""`verify --since-checkpoint` on a real SeaweedFS: a clean check with the signing key
stores a signed, locked checkpoint; the next check reads only what came after it,
links the chain back to it with no gap, and is not misled by a planted checkpoint."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.cli import TEST_SIGNER, archive_with_cli, run_cli


@pytest.fixture
def checked(cli_config, sandbox_http, tmp_path):
    """Two runs archived, then `verify --all` by the job (signing key set): clean,
    and a checkpoint stored."""
    cfg, env = cli_config
    cfg.write_text(cfg.read_text() + '\n[object_lock]\nmode = "COMPLIANCE"\nretain_days = 1\n')
    archive_with_cli(cfg, env, sandbox_http, runs=2)
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    auditor = {k: v for k, v in env.items() if k.startswith("AWS_")}
    code, doc = _verify(cfg, env, pub, "--all")
    assert (code, doc["findings"]) == (0, [])
    return cfg, env, auditor, pub, doc["checkpoint"]


def _verify(cfg, env, pub, *extra):
    proc = run_cli(
        ["verify", "--config", str(cfg), "--public-key", str(pub), "--json", *extra], env=env
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def _new_runs(client, bucket, before):
    listed = client.list_objects_v2(Bucket=bucket, Prefix="cli/runs/").get("Contents", [])
    keys = [o["Key"] for o in listed if o["Key"].endswith(".json") and o["Key"] not in before]
    docs = {k: json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys}
    return sorted(keys, key=lambda k: docs[k]["started_at"]), docs


def test_the_checkpoint_is_signed_and_locked(checked, seaweedfs, s3_bucket):
    _, _, _, _, key = checked
    assert key.startswith("cli/checks/") and key.endswith(".json")
    client = seaweedfs.client()
    data = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    sig = client.get_object(Bucket=s3_bucket, Key=key + ".sig")["Body"].read()
    assert TEST_SIGNER.verifier.verify(data, sig)
    doc = json.loads(data)
    assert doc["kind"] == "idpass-archiver/verify-checkpoint" and doc["scope"] == "all"
    assert [t["key"] for t in doc["run_manifests"]] and doc["previous_checkpoint"] is None
    assert client.head_object(Bucket=s3_bucket, Key=key)["ObjectLockMode"] == "COMPLIANCE"


def test_an_incremental_check_reads_only_what_is_new(checked, sandbox_http, seaweedfs, s3_bucket):
    """Two more runs: --since-checkpoint checks their passes only, and is clean; a
    second incremental check by the job chains its checkpoint to the first."""
    cfg, env, auditor, pub, first = checked
    client = seaweedfs.client()
    new_ids = archive_with_cli(cfg, env, sandbox_http, runs=2)
    code, doc = _verify(cfg, auditor, pub, "--since-checkpoint")
    assert (code, doc["findings"]) == (0, [])
    assert doc["started_from"] == first and "checkpoint" not in doc  # no signing key
    assert doc["passes_checked"] == len(new_ids)
    code, doc = _verify(cfg, env, pub, "--since-checkpoint")
    assert code == 0
    second = json.loads(client.get_object(Bucket=s3_bucket, Key=doc["checkpoint"])["Body"].read())
    assert second["scope"] == "since_checkpoint"
    assert second["previous_checkpoint"]["key"] == first


def test_a_gap_after_the_checkpoint_is_found(checked, sandbox_http, seaweedfs, s3_bucket):
    """Two runs after the checkpoint; the first of them hidden by a delete marker:
    the newest no longer links back to the checkpoint's run manifest."""
    cfg, env, auditor, pub, _ = checked
    client = seaweedfs.client()
    before, _ = _new_runs(client, s3_bucket, set())
    archive_with_cli(cfg, env, sandbox_http, runs=2)
    new, _ = _new_runs(client, s3_bucket, set(before))
    assert len(new) == 2
    client.delete_object(Bucket=s3_bucket, Key=new[0])
    code, doc = _verify(cfg, auditor, pub, "--since-checkpoint")
    assert code == 1
    kinds = {(f["kind"], f["key"]) for f in doc["findings"]}
    assert ("chain_broken", new[0]) in kinds
    assert ("delete_marker", new[0]) in kinds


def test_a_hidden_pass_after_the_checkpoint_is_found(checked, sandbox_http, seaweedfs, s3_bucket):
    cfg, env, auditor, pub, _ = checked
    client = seaweedfs.client()
    [pid, *_] = archive_with_cli(cfg, env, sandbox_http, runs=1)
    prefix = f"cli/passes/{pid}/"
    for o in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]:
        client.delete_object(Bucket=s3_bucket, Key=o["Key"])
    code, doc = _verify(cfg, auditor, pub, "--since-checkpoint")
    assert code == 1
    assert ("missing", prefix + "manifest.json") in {(f["kind"], f["key"]) for f in doc["findings"]}


def test_a_planted_checkpoint_is_named_and_not_started_from(checked, seaweedfs, s3_bucket):
    """A newer checkpoint without a trusted signature, claiming a later tip: named
    `bad_checkpoint`; the check starts from the signed one."""
    cfg, _, auditor, pub, first = checked
    client = seaweedfs.client()
    doc = json.loads(client.get_object(Bucket=s3_bucket, Key=first)["Body"].read())
    doc["run_manifests"] = []
    planted = first.rsplit("/", 1)[0] + "/29991231T235959000000Z.json"
    client.put_object(
        Bucket=s3_bucket, Key=planted, Body=json.dumps(doc).encode(), ServerSideEncryption="AES256"
    )
    code, report = _verify(cfg, auditor, pub, "--since-checkpoint")
    assert code == 1
    assert [(f["kind"], f["key"]) for f in report["findings"]] == [("bad_checkpoint", planted)]
    assert report["started_from"] == first
