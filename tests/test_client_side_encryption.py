"""End-to-end encrypted archive: age recipients, the `age` CLI, verify and export."""

from __future__ import annotations

import hashlib
import json
import subprocess

from pyrage import x25519

from tests.fixtures.cli import TEST_SIGNER, run_cli


def test_age_encrypted_archive_round_trip(
    cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """Objects are age ciphertext; the age CLI, verify --identity and export all open them."""
    cfg, env = cli_config
    identity = x25519.Identity.generate()
    id_file = tmp_path / "auditor.agekey"
    id_file.write_text(f"# auditor\n{identity}\n")
    id_file.chmod(0o600)
    pii_watch.secret(str(identity))
    cfg.write_text(
        cfg.read_text() + f'\n[client_side_encryption]\nrecipients = ["{identity.to_public()}"]\n'
    )
    [p] = sandbox_http.post(
        "/_sandbox/passes", json={"image_retention_days": 9, "slots": ["probe", "document_1_front"]}
    ).json()["passes"]
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    run = run_cli(["run", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert json.loads(run.stdout)["counts"]["archived"] == 1, run.stderr[-2000:]

    client = seaweedfs.client()
    manifest = json.loads(
        client.get_object(Bucket=s3_bucket, Key=f"cli/passes/{p['id']}/manifest.json")[
            "Body"
        ].read()
    )
    assert manifest["client_side_encryption"]["recipients"] == [str(identity.to_public())]
    image = next(o for o in manifest["objects"] if o.get("slot") == "probe")
    assert image["key"].endswith("images/probe.jpg.age")
    stored = client.get_object(Bucket=s3_bucket, Key=image["key"])["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1")
    assert hashlib.sha256(stored).hexdigest() == image["sha256"]
    assert (
        client.head_object(Bucket=s3_bucket, Key=image["key"])["ServerSideEncryption"] == "aws:kms"
    )

    # Interop: Debian's age CLI decrypts it to the sandbox's JPEG.
    enc = tmp_path / "probe.jpg.age"
    enc.write_bytes(stored)
    plain = subprocess.run(
        ["age", "-d", "-i", str(id_file), str(enc)], capture_output=True, check=True
    ).stdout
    assert hashlib.sha256(plain).hexdigest() == image["plaintext_sha256"]
    assert plain == sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/probe").content

    pub = tmp_path / "pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    audit = {k: v for k, v in env.items() if k.startswith("AWS_")}
    ver = run_cli(
        [
            "verify",
            "--config",
            str(cfg),
            "--public-key",
            str(pub),
            "--deep",
            "--identity",
            str(id_file),
            "--json",
        ],
        env=audit,
    )
    assert ver.returncode == 0, ver.stdout[-2000:]

    out = tmp_path / "export"
    exp = run_cli(
        [
            "export",
            "--config",
            str(cfg),
            "--public-key",
            str(pub),
            "--pass",
            p["id"],
            "--identity",
            str(id_file),
            "--to",
            str(out),
        ],
        env=audit,
    )
    assert exp.returncode == 0, exp.stderr[-2000:]
    assert (out / p["id"] / "images" / "probe.jpg").read_bytes() == plain
    record = json.loads((out / p["id"] / "record.json").read_text())
    assert record["id"] == p["id"]
    sums = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=out / p["id"], capture_output=True, text=True
    )
    assert sums.returncode == 0, sums.stdout

    no_id = run_cli(
        [
            "export",
            "--config",
            str(cfg),
            "--public-key",
            str(pub),
            "--pass",
            p["id"],
            "--to",
            str(tmp_path / "x"),
        ],
        env=audit,
    )
    assert no_id.returncode == 1 and "--identity" in no_id.stderr
    other = tmp_path / "other.agekey"
    other.write_text(f"{x25519.Identity.generate()}\n")
    wrong = run_cli(
        [
            "verify",
            "--config",
            str(cfg),
            "--public-key",
            str(pub),
            "--deep",
            "--identity",
            str(other),
            "--json",
        ],
        env=audit,
    )
    assert wrong.returncode == 1
    assert {f["kind"] for f in json.loads(wrong.stdout)["findings"]} == {"undecryptable"}
