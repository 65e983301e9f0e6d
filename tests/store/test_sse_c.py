"""SSE-C: objects encrypted with a customer key that S3 never keeps."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import botocore.exceptions
import pytest
from pydantic import SecretStr

from archiver.config import StorageSettings
from archiver.store.s3 import S3Store
from tests.fixtures.cli import TEST_SIGNER, run_cli


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_sse_c_put_head_get_and_refusal_without_the_key(seaweedfs, s3_bucket):
    """With SSE-C the store writes and reads back; a read without the key is refused."""
    settings = StorageSettings(
        bucket=s3_bucket,
        endpoint_url=seaweedfs.endpoint_url,
        region="us-east-1",
        sse="SSE-C",
    ).model_copy(update={"sse_customer_key": SecretStr(_key())})
    data = b"\xff\xd8 sse-c test \xff\xd9"
    with S3Store(settings, credentials=seaweedfs.credentials) as store:
        put = store.put(
            "t/x.bin",
            data,
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="application/octet-stream",
        )
        assert not put.reused
        info = store.head("t/x.bin")
        assert info is not None and info.encryption == "SSE-C"
        assert store.get("t/x.bin") == data
        again = store.put(
            "t/x.bin",
            data,
            sha256=hashlib.sha256(data).hexdigest(),
            content_type="application/octet-stream",
        )
        assert again.reused
    with pytest.raises(botocore.exceptions.ClientError):
        seaweedfs.client().get_object(Bucket=s3_bucket, Key="t/x.bin")


def test_run_and_verify_with_sse_c(cli_config, sandbox_http, tmp_path):
    """A run with sse = SSE-C archives; verify (given the key) checks it clean."""
    cfg, env = cli_config
    keyfile = tmp_path / "sse-c.key"
    keyfile.write_text(_key() + "\n")
    text = cfg.read_text().replace(
        'kms_key_id = "archive-key"', f'sse = "SSE-C"\nsse_customer_key_file = "{keyfile}"'
    )
    cfg.write_text(text)
    sandbox_http.post("/_sandbox/passes", json={"image_retention_days": 9, "slots": ["probe"]})
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    run = run_cli(["run", "--config", str(cfg), "--json"], env=env)
    assert json.loads(run.stdout)["counts"]["archived"] == 1, run.stderr[-2000:]
    pub = tmp_path / "pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    audit = {k: v for k, v in env.items() if k.startswith("AWS_")}
    ver = run_cli(
        ["verify", "--config", str(cfg), "--public-key", str(pub), "--deep", "--json"], env=audit
    )
    assert ver.returncode == 0, ver.stdout[-2000:]
    keyfile.write_text("not base64 of 32 bytes\n")
    bad = run_cli(["verify", "--config", str(cfg), "--public-key", str(pub)], env=audit)
    assert bad.returncode == 2 and "sse_customer_key_file" in bad.stderr
