"""Nothing unsigned is trusted: a ``manifest.json`` planted under a pass's directory
(by anyone who can write to the bucket) never makes that pass archived.

Each case plants an object before the pass is archived, on real SeaweedFS, and
drives the CLI: the planted manifest is unsigned, signed by a key nobody trusts, or
a genuine signed manifest of another pass copied under this pass's directory. The
run fails the pass with its ``untrusted_manifest`` reason (exit 1), neither reads
the API for it nor writes anything under its directory, and the run manifest does
not list it as archived; ``catalog rebuild`` does not record it (trusting only the
configured keys) and ``export`` refuses it.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from archiver.core.format import Layout, signature_key
from archiver.core.signing import Signer
from tests.fixtures.cli import TEST_SIGNER, archive_with_cli, run_cli

LAYOUT = Layout("cli")


def _put(client: Any, bucket: str, key: str, body: bytes) -> None:
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
        ServerSideEncryption="aws:kms",
        SSEKMSKeyId="archive-key",
    )


def _get(client: Any, bucket: str, key: str) -> bytes:
    body: bytes = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


def _plant(client: Any, bucket: str, genuine: str, target: str, how: str) -> None:
    """Put a manifest under ``target``'s directory, made from ``genuine``'s (archived,
    signed by the test key): ``unsigned`` (its document with ``target``'s pass id, no
    signature), ``bad_signature`` (the same, signed by another key) or
    ``wrong_pass_id`` (``genuine``'s manifest and signature copied unchanged)."""
    data = _get(client, bucket, LAYOUT.manifest(genuine))
    sig = _get(client, bucket, signature_key(LAYOUT.manifest(genuine)))
    if how != "wrong_pass_id":
        doc = orjson.loads(data)
        doc["pass_id"] = target
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
        sig = Signer.generate().sign(data)
    key = LAYOUT.manifest(target)
    _put(client, bucket, key, data)
    if how != "unsigned":
        _put(client, bucket, signature_key(key), sig)


def _new_pass(cfg: Path, env: dict[str, str], sandbox_http: Any) -> str:
    """A completed sandbox pass, imported into the catalog but not yet archived."""
    [created] = sandbox_http.post(
        "/_sandbox/passes",
        json={"count": 1, "image_retention_days": 30, "slots": ["probe", "id_photo"]},
    ).json()["passes"]
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    imported = run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert imported.returncode == 0, imported.stderr[-2000:]
    return str(created["id"])


def _keys_under(client: Any, bucket: str, pass_id: str) -> list[str]:
    pages = client.get_paginator("list_object_versions").paginate(
        Bucket=bucket, Prefix=LAYOUT.pass_dir(pass_id)
    )
    return sorted(v["Key"] for page in pages for v in page.get("Versions", []))


@pytest.mark.parametrize("how", ["unsigned", "bad_signature", "wrong_pass_id"])
def test_a_planted_manifest_fails_the_pass_instead_of_archiving_it(
    how: str, cli_config, sandbox_http, seaweedfs, s3_bucket, pii_watch
) -> None:
    cfg, env = cli_config
    [genuine] = archive_with_cli(cfg, env, sandbox_http, passes_per_run=1)
    target = _new_pass(cfg, env, sandbox_http)
    client = seaweedfs.client()
    _plant(client, s3_bucket, genuine, target, how)
    planted = _keys_under(client, s3_bucket, target)
    # a counted fault on the target's details read: still there after the run means
    # the API was never asked about the pass
    sandbox_http.post("/_sandbox/faults", json={"kind": "delay", "seconds": 0, "pass_id": target})

    proc = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert summary["counts"]["archived"] == 0 and summary["counts"]["failed"] == 1
    [failed] = summary["failed"]
    key = LAYOUT.manifest(target)
    assert failed["pass_id"] == target
    assert failed["reason"].startswith(f"untrusted_manifest: {how}: {key} "), failed["reason"]

    faults = sandbox_http.get("/_sandbox/faults").json()["faults"]
    assert [f["pass_id"] for f in faults] == [target]  # not read
    assert _keys_under(client, s3_bucket, target) == planted  # nothing written there

    doc = orjson.loads(_get(client, s3_bucket, summary["run_manifest_key"]))
    assert target not in {p["pass_id"] for p in doc["passes"]}
    assert [(p["pass_id"], p["outcome"]) for p in doc["not_archived"]] == [(target, "failed")]
    assert doc["exit_code"] == 1

    status = json.loads(run_cli(["status", "--config", str(cfg), "--json"], env=env).stdout)
    assert status["counts"] == {"archived": 1, "failed": 1}
    # a later run does not take it as archived either: the pass waits for a person
    again = run_cli(["run", "--json", "--config", str(cfg), "--pass", target], env=env)
    assert again.returncode == 1
    assert json.loads(again.stdout)["failed"][0]["reason"].startswith("untrusted_manifest: ")


def _drop_catalog(cfg: Path) -> None:
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm"):
        (cfg.parent / name).unlink(missing_ok=True)


def test_rebuild_trusts_only_configured_keys(
    cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
) -> None:
    """With only ``signing.public_key_files`` configured (no private key: an
    auditor's or a restore host's setup), rebuild records the genuine pass and
    rejects the planted manifests with their reasons; with no key configured at all
    it refuses (exit 2) rather than record anything on the bucket's word."""
    cfg, env = cli_config
    [genuine, other] = archive_with_cli(cfg, env, sandbox_http, passes_per_run=2)
    unsigned, copied = _new_pass(cfg, env, sandbox_http), _new_pass(cfg, env, sandbox_http)
    client = seaweedfs.client()
    _plant(client, s3_bucket, genuine, unsigned, "unsigned")
    _plant(client, s3_bucket, other, copied, "wrong_pass_id")
    _drop_catalog(cfg)
    no_key = {k: v for k, v in env.items() if k != "IDPASS_ARCHIVER_SIGNING_KEY"}

    refused = run_cli(["catalog", "rebuild", "--config", str(cfg), "--json"], env=no_key)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "signing.key_file or signing.public_key_files" in refused.stderr
    assert "Traceback" not in refused.stderr

    pub = tmp_path / "trusted.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    cfg.write_text(cfg.read_text() + f'\n[signing]\npublic_key_files = ["{pub}"]\n')
    proc = run_cli(
        ["catalog", "rebuild", "--config", str(cfg), "--json"], env=no_key, watch=pii_watch
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert (report["manifests"], report["recorded"]) == (4, 2)
    reasons = {r["key"]: r["reason"] for r in report["rejected"]}
    assert set(reasons) == {LAYOUT.manifest(unsigned), LAYOUT.manifest(copied)}
    assert reasons[LAYOUT.manifest(unsigned)].startswith("untrusted_manifest: unsigned: ")
    assert reasons[LAYOUT.manifest(copied)].startswith("untrusted_manifest: wrong_pass_id: ")
    status = json.loads(run_cli(["status", "--config", str(cfg), "--json"], env=env).stdout)
    assert status["counts"] == {"archived": 2}


@pytest.mark.parametrize("how", ["unsigned", "bad_signature", "wrong_pass_id"])
def test_export_refuses_a_planted_manifest(
    how: str, cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
) -> None:
    cfg, env = cli_config
    [genuine] = archive_with_cli(cfg, env, sandbox_http, passes_per_run=1)
    target = _new_pass(cfg, env, sandbox_http)
    _plant(seaweedfs.client(), s3_bucket, genuine, target, how)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    audit = {k: v for k, v in env.items() if k.startswith("AWS_")}
    out = tmp_path / "out"
    proc = run_cli(
        [
            *("export", "--config", str(cfg), "--public-key", str(pub)),
            *("--pass", target, "--to", str(out)),
        ],
        env=audit,
        watch=pii_watch,
    )
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr
    assert f"pass {target}: untrusted_manifest: {how}: " in proc.stderr, proc.stderr[-2000:]
    assert not (out / target).exists()
