"""`idpass-archiver doctor` against the real sandbox and SeaweedFS."""

from __future__ import annotations

import json

from tests.fixtures.cli import run_cli


def _doctor(cfg, env):
    proc = run_cli(["doctor", "--config", str(cfg), "--json"], env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    return proc.returncode, {c["check"]: c for c in doc["checks"]}


def test_doctor_passes_on_a_well_configured_bucket(cli_config, seaweedfs, s3_bucket):
    """With default encryption and Object Lock as configured, every check passes."""
    cfg, env = cli_config
    cfg.write_text(cfg.read_text() + '\n[object_lock]\nmode = "GOVERNANCE"\nretain_days = 1\n')
    seaweedfs.client().put_bucket_encryption(
        Bucket=s3_bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    code, checks = _doctor(cfg, env)
    assert code == 0, checks
    assert all(c["ok"] for c in checks.values())
    assert {
        "api",
        "signing key",
        "bucket",
        "default encryption",
        "versioning and object lock",
        "clock",
        "round trip",
    } <= set(checks)
    listing = seaweedfs.client().list_objects_v2(Bucket=s3_bucket, Prefix="cli/.doctor/")
    assert listing.get("KeyCount", 0) == 0  # the scratch object is gone


def test_doctor_names_each_failure(cli_config, seaweedfs):
    """A refused token, no default encryption and a lock the bucket lacks each fail."""
    cfg, env = cli_config
    plain = "doctor-plain-bucket"
    seaweedfs.create_bucket(plain, kms_key_id="archive-key")
    text = cfg.read_text().replace('bucket = "', f'bucket = "{plain}"\n# was: "', 1)
    cfg.write_text(text + '\n[object_lock]\nmode = "COMPLIANCE"\n')
    code, checks = _doctor(cfg, {**env, "IDPASS_ARCHIVER_API_TOKEN": "wrong-token"})
    assert code == 1
    assert not checks["api"]["ok"] and "refused" in checks["api"]["detail"]
    assert not checks["default encryption"]["ok"]
    assert not checks["versioning and object lock"]["ok"]
    assert checks["round trip"]["ok"] and checks["clock"]["ok"]
