"""Tamper suite: someone who can write to the bucket but cannot bypass Object Lock.

Under COMPLIANCE retention a delete *without* a version id is allowed: it puts a
delete marker over the locked version, which hides it from a plain listing. Each
test below does one such thing to a real archive on SeaweedFS (written by CLI runs
with COMPLIANCE Object Lock), and `verify --all` must end with exit 1 and a named
finding, never ok. Hiding a whole pass, or the newest run manifest, used to verify
clean: --all built its list of passes from a plain listing and ignored the run
manifests' pass lists.
"""

from __future__ import annotations

import json

import pytest

from archiver.core.signing import Signer
from archiver.verify import sample
from tests.fixtures.cli import TEST_SIGNER, archive_with_cli, run_cli

RUNS = 2


@pytest.fixture
def archive(cli_config, sandbox_http, tmp_path):
    """Two CLI runs (two passes each) with COMPLIANCE lock; the auditor's env and key."""
    cfg, env = cli_config
    cfg.write_text(cfg.read_text() + '\n[object_lock]\nmode = "COMPLIANCE"\nretain_days = 1\n')
    ids = archive_with_cli(cfg, env, sandbox_http, runs=RUNS)
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    return cfg, {k: v for k, v in env.items() if k.startswith("AWS_")}, ids, pub


def _verify(archive, *extra):
    cfg, env, _, pub = archive
    proc = run_cli(
        ["verify", "--all", "--config", str(cfg), "--public-key", str(pub), "--json", *extra],
        env=env,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def _named(doc):
    return {(f["kind"], f["key"]) for f in doc["findings"]}


def _run_keys(client, bucket):
    listed = client.list_objects_v2(Bucket=bucket, Prefix="cli/runs/").get("Contents", [])
    keys = [o["Key"] for o in listed if o["Key"].endswith(".json")]
    docs = {k: json.loads(client.get_object(Bucket=bucket, Key=k)["Body"].read()) for k in keys}
    return sorted(keys, key=lambda k: docs[k]["started_at"]), docs


def test_the_untouched_archive_verifies_clean(archive):
    code, doc = _verify(archive, "--deep")
    assert (code, doc["findings"]) == (0, [])


def test_delete_markers_on_a_whole_pass_are_found(archive, seaweedfs, s3_bucket):
    """Every object of an archived pass hidden by a delete marker (the locked versions
    stay): the signed run manifest lists the pass, the bucket no longer shows it."""
    _, _, ids, _ = archive
    client = seaweedfs.client()
    prefix = f"cli/passes/{ids[0]}/"
    hidden = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]]
    assert len(hidden) >= 5
    for key in hidden:
        client.delete_object(Bucket=s3_bucket, Key=key)
    for extra in ((), ("--deep",)):
        code, doc = _verify(archive, *extra)
        assert code == 1 and not doc["ok"]
        assert ("listed_but_missing", prefix + "manifest.json") in _named(doc)


def test_a_delete_marker_on_one_image_is_found_also_outside_the_sample(
    archive, seaweedfs, s3_bucket
):
    """One image hidden by a delete marker: `deleted` when its pass is checked, and
    `delete_marker` (from the versions listing) when a sample leaves its pass out."""
    _, _, ids, _ = archive
    key = f"cli/passes/{ids[1]}/images/probe.jpg"
    seaweedfs.client().delete_object(Bucket=s3_bucket, Key=key)
    code, doc = _verify(archive)
    assert code == 1
    assert ("deleted", key) in _named(doc)
    left_out = [seed for seed in range(40) if ids[1] not in sample(sorted(ids), 25, seed)]
    code, doc = _verify(archive, "--sample", "25", "--seed", str(left_out[0]))
    assert code == 1
    assert ("delete_marker", key) in _named(doc)


def test_a_delete_marker_on_the_newest_run_manifest_is_found(archive, seaweedfs, s3_bucket):
    """The newest run manifest (the chain's head) hidden by a delete marker: the
    versions listing still shows it, signed by the trusted key."""
    client = seaweedfs.client()
    ordered, _ = _run_keys(client, s3_bucket)
    newest = ordered[-1]
    client.delete_object(Bucket=s3_bucket, Key=newest)
    code, doc = _verify(archive)
    assert code == 1
    assert ("delete_marker", newest) in _named(doc)


def test_the_newest_run_manifest_and_its_passes_hidden_are_found(archive, seaweedfs, s3_bucket):
    """The newest run manifest and every pass it lists hidden: nothing in a plain
    listing says anything is gone; the versions listing does."""
    client = seaweedfs.client()
    ordered, docs = _run_keys(client, s3_bucket)
    newest = ordered[-1]
    listed = [p["pass_id"] for p in docs[newest]["passes"]]
    assert listed
    for pid in listed:
        prefix = f"cli/passes/{pid}/"
        for o in client.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]:
            client.delete_object(Bucket=s3_bucket, Key=o["Key"])
    client.delete_object(Bucket=s3_bucket, Key=newest)
    client.delete_object(Bucket=s3_bucket, Key=newest + ".sig")
    code, doc = _verify(archive)
    assert code == 1
    named = _named(doc)
    assert ("delete_marker", newest) in named
    assert {("listed_but_missing", f"cli/passes/{pid}/manifest.json") for pid in listed} <= named


@pytest.mark.parametrize("signer", ["unsigned", "other key"])
def test_a_planted_run_manifest_is_found_and_kept_out_of_the_chain(
    archive, seaweedfs, s3_bucket, signer
):
    """A run manifest planted beside the newest one (naming the same previous, so a
    fork if it counted; listing a pass that is not there): named `unsigned` or
    `untrusted_key`, and neither a chain finding nor its pass list on top."""
    client = seaweedfs.client()
    ordered, docs = _run_keys(client, s3_bucket)
    head = ordered[-1]
    doc = dict(docs[head])
    doc["run_id"] = "planted"
    ghost = "00000000-0000-4000-8000-000000000000"
    doc["passes"] = [
        *doc["passes"],
        {
            "pass_id": ghost,
            "manifest_key": f"cli/passes/{ghost}/manifest.json",
            "manifest_sha256": "0" * 64,
            "already_archived": False,
            "recovered": False,
        },
    ]
    other = Signer.generate()
    doc["signing"] = {**doc["signing"], "key_id": other.key_id}
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    planted = head.rsplit("/", 1)[0] + "/planted.json"
    client.put_object(Bucket=s3_bucket, Key=planted, Body=data, ServerSideEncryption="AES256")
    if signer == "other key":
        client.put_object(
            Bucket=s3_bucket,
            Key=planted + ".sig",
            Body=other.sign(data),
            ServerSideEncryption="AES256",
        )
    code, report = _verify(archive)
    assert code == 1
    kinds = {f["kind"] for f in report["findings"] if f["key"] == planted}
    assert kinds == ({"unsigned"} if signer == "unsigned" else {"untrusted_key"})
    assert [f for f in report["findings"] if f["key"] != planted] == []
