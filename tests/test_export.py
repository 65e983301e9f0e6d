"""``export``, ``verify`` and ``catalog rebuild`` on a manifest this build cannot read.

A correctly signed manifest of a newer ``manifest_version`` (written by a later
release) is not a bug of this one: each command says so clearly and goes on.
"""

from __future__ import annotations

import base64
import hashlib

import orjson

from archiver.core.format import MANIFEST_VERSION, Layout, signature_key
from tests.fixtures.cli import TEST_SIGNER, archive_with_cli, run_cli

NEWER = f"manifest_version {MANIFEST_VERSION + 1}"


def _plant_newer_manifest(client, bucket: str, pass_id: str) -> None:
    """Rewrite the pass's manifest as the next version, signed with the archive's own key."""
    key = Layout("cli").manifest(pass_id)
    doc = orjson.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    doc["manifest_version"] = MANIFEST_VERSION + 1
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    for k, body in ((key, data), (signature_key(key), TEST_SIGNER.sign(data))):
        client.put_object(
            Bucket=bucket,
            Key=k,
            Body=body,
            ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
            ServerSideEncryption="aws:kms",
            SSEKMSKeyId="archive-key",
        )


def test_a_signed_manifest_of_an_unknown_version_gets_a_clear_outcome(
    cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    cfg, env = cli_config
    [pid, _] = archive_with_cli(cfg, env, sandbox_http, passes_per_run=2)
    _plant_newer_manifest(seaweedfs.client(), s3_bucket, pid)
    pub = tmp_path / "pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    audit = {k: v for k, v in env.items() if k.startswith("AWS_")}

    exp = run_cli(
        [
            *("export", "--config", str(cfg), "--public-key", str(pub)),
            *("--pass", pid, "--to", str(tmp_path / "out")),
        ],
        env=audit,
        watch=pii_watch,
    )
    assert exp.returncode == 1, exp.stderr
    assert "internal error" not in exp.stderr
    assert "cannot be read by this build" in exp.stderr and NEWER in exp.stderr
    assert not (tmp_path / "out" / pid).exists()

    ver = run_cli(
        ["verify", "--config", str(cfg), "--public-key", str(pub), "--pass", pid, "--json"],
        env=audit,
        watch=pii_watch,
    )
    assert ver.returncode == 1, ver.stderr
    [finding] = orjson.loads(ver.stdout)["findings"]
    assert finding["kind"] == "invalid_manifest" and NEWER in finding["detail"]

    rebuilt = run_cli(
        ["catalog", "rebuild", "--config", str(cfg), "--json"], env=env, watch=pii_watch
    )
    report = orjson.loads(rebuilt.stdout)
    assert report["recorded"] == 1, rebuilt.stderr  # the other pass
    [rejected] = report["rejected"]
    assert rejected["key"] == Layout("cli").manifest(pid)
    assert NEWER in rejected["reason"]
