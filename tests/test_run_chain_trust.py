"""What the run chain trusts, against someone who can write to the bucket (but not
bypass Object Lock) and read what the job stores there:

* the run manifest's ``config_fingerprint`` holds no secret: not the catalog
  password (it was recovered offline from an unsalted hash of the settings), not
  any other value of ``config.SECRETS``, not the credentials in any URL;
* every object the job writes carries the configured Object Lock retention: run
  manifests, their signatures and the public key's copy as well as the passes;
* a foreign object where the public key belongs is a systemic failure that says
  what is wrong (exit 3), not a traceback;
* only a run manifest signed by a trusted key is adopted into the chain: an
  unsigned or badly signed object planted under ``runs/`` is ignored (and logged).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from archiver import config
from archiver.core.signing import Signer
from tests.fixtures.cli import TEST_SIGNER, archive_with_cli, run_cli

BASE = """
[api]
base_url = "https://api.example.test"
[storage]
bucket = "my-archive"
kms_key_id = "alias/archive"
"""
CATALOG_URL = "postgresql+psycopg://archiver:{pw}@db.example.test:5432/archiver"


def _fingerprint(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    p = tmp_path / "archiver.toml"
    p.write_text(BASE + text)
    return config.load(p, environ=env or {}).fingerprint()


def test_the_fingerprint_does_not_change_with_the_catalog_password(tmp_path: Path) -> None:
    """Two settings that differ only in the catalog's password, written in the file
    (catalog.url) or read from catalog.url_file (as the Kubernetes config does), have
    the same fingerprint; another setting still changes it."""
    inline = [
        _fingerprint(tmp_path, f'[catalog]\nurl = "{CATALOG_URL.format(pw=pw)}"\n')
        for pw in ("first-Secret-1", "second-Secret-2")
    ]
    url_file = tmp_path / "catalog-url"
    from_file = []
    for pw in ("first-Secret-1", "second-Secret-2"):
        url_file.write_text(CATALOG_URL.format(pw=pw) + "\n")
        from_file.append(_fingerprint(tmp_path, f'[catalog]\nurl_file = "{url_file}"\n'))
    other = _fingerprint(
        tmp_path, f'[catalog]\nurl_file = "{url_file}"\n', {"IDPASS_ARCHIVER_STORAGE__PREFIX": "z"}
    )
    assert inline[0] == inline[1]
    assert from_file[0] == from_file[1] != other


def test_the_fingerprint_input_holds_no_secret_value(tmp_path: Path) -> None:
    """Every secret a configuration can hold (the API token, the catalog key and URL,
    a SQL source's URL, the SSE-C key, the signing key) and the credentials in every
    URL-like setting are absent from what is hashed; the settings that are no secret
    are there."""
    secrets = {
        "token": "api-Token-Value-77",
        "catalog_key": "catalog-Key-Value-78",
        "catalog_pw": "catalog-Pw-Value-79",
        "source_pw": "source-Pw-Value-80",
        "sse_c": base64.b64encode(b"sse-c-Key-Value-81".ljust(32, b"x")).decode(),
        "signing": "signing-Key-Value-82",
        "push_pw": "push-Pw-Value-83",
        "api_pw": "api-Pw-Value-84",
        "query_pw": "query-Pw-Value-85",
    }
    (tmp_path / "catalog-url").write_text(
        CATALOG_URL.format(pw=secrets["catalog_pw"]) + f"?password={secrets['query_pw']}"
    )
    (tmp_path / "kyc-url").write_text(f"postgresql://kyc:{secrets['source_pw']}@kyc-db/kyc")
    (tmp_path / "sse-c").write_text(secrets["sse_c"])
    (tmp_path / "signing.pem").write_text(secrets["signing"])
    text = f"""
[catalog]
url_file = "{tmp_path / "catalog-url"}"
[metrics]
pushgateway_url = "https://push:{secrets["push_pw"]}@push.example.test:9091/?job=x"
[[sources]]
kind = "sql"
name = "kyc"
url_file = "{tmp_path / "kyc-url"}"
query = "SELECT id, cipher_key, completed_at, updated_at FROM p WHERE updated_at > :watermark"
store_cipher_keys = true
"""
    p = tmp_path / "archiver.toml"
    base = BASE.replace('kms_key_id = "alias/archive"', 'sse = "SSE-C"').replace(
        "https://api.example.test", f"https://user:{secrets['api_pw']}@api.example.test"
    )
    sse_c_file = f'sse_customer_key_file = "{tmp_path / "sse-c"}"\n'
    p.write_text(base + sse_c_file + text)
    settings = config.load(
        p,
        environ={
            "IDPASS_ARCHIVER_API_TOKEN": secrets["token"],
            "IDPASS_ARCHIVER_CATALOG_KEY": secrets["catalog_key"],
            "IDPASS_ARCHIVER_SIGNING_KEY": secrets["signing"],
        },
    )
    hashed = orjson.dumps(settings.fingerprint_input()).decode()
    # the secrets were loaded
    assert settings.catalog.url.endswith(secrets["query_pw"])
    assert settings.storage.sse_customer_key is not None and settings.signing.key is not None
    assert [name for name, value in secrets.items() if value in hashed] == []
    doc = json.loads(hashed)
    assert doc["api"]["base_url"] == "https://api.example.test"
    assert doc["metrics"]["pushgateway_url"] == "https://push.example.test:9091/?job=x"
    assert doc["storage"]["bucket"] == "my-archive" and doc["sources"][0]["name"] == "kyc"


# -- Object Lock on every object the job writes (real SeaweedFS) -------------------------


def _lock(cfg: Path, mode: str = "GOVERNANCE") -> None:
    cfg.write_text(cfg.read_text() + f'\n[object_lock]\nmode = "{mode}"\nretain_days = 1\n')


def _run(cfg: Path, env: dict[str, str], watch: Any = None) -> dict[str, Any]:
    proc = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=watch)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    doc["_proc"] = proc
    return doc


def test_run_manifests_signatures_and_the_key_copy_carry_object_lock(
    cli_config, sandbox_http, seaweedfs, s3_bucket
) -> None:
    """With [object_lock] configured, two runs: each run manifest, its signature and
    the public key's copy are stored with that mode and a retain-until date about
    retain_days ahead, like the passes' objects."""
    cfg, env = cli_config
    _lock(cfg)
    archive_with_cli(cfg, env, sandbox_http, runs=2)
    s3 = seaweedfs.client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket, Prefix="cli/")
        for o in page.get("Contents", [])
    ]
    audit = [k for k in keys if k.startswith(("cli/runs/", "cli/keys/"))]
    assert len([k for k in audit if k.startswith("cli/runs/")]) == 4  # 2 manifests, 2 .sig
    assert f"cli/keys/{TEST_SIGNER.key_id}.pub.pem" in audit
    a_pass_object = next(k for k in keys if k.startswith("cli/passes/"))
    now = datetime.now(UTC)
    for key in [*audit, a_pass_object]:
        retention = s3.get_object_retention(Bucket=s3_bucket, Key=key)["Retention"]
        assert retention["Mode"] == "GOVERNANCE", key
        ahead = retention["RetainUntilDate"] - now
        assert timedelta(hours=23) < ahead <= timedelta(days=1, minutes=5), (key, ahead)


# -- a foreign object where the public key belongs ---------------------------------------


def test_a_foreign_object_at_the_public_key_is_a_systemic_failure(
    cli_config, sandbox_http, seaweedfs, s3_bucket, pii_watch
) -> None:
    """Someone who can write to the bucket puts other bytes at keys/<key id>.pub.pem
    (the key id is public) before the job first runs: every run stops before any pass
    with exit 3, its summary and log naming the key, saying it does not match this
    signer's public key and what to do; no traceback. The passes stay due."""
    cfg, env = cli_config
    key = f"cli/keys/{TEST_SIGNER.key_id}.pub.pem"
    seaweedfs.client().put_object(Bucket=s3_bucket, Key=key, Body=b"not our key\n")
    r = sandbox_http.post(
        "/_sandbox/passes", json={"count": 2, "image_retention_days": 30, "slots": ["id_photo"]}
    )
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    imported = run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert imported.returncode == 0, imported.stderr[-2000:]
    for _ in range(2):
        doc = _run(cfg, env, pii_watch)
        assert doc["_proc"].returncode == 3, doc["_proc"].stderr[-3000:]
        error = doc["systemic_error"]
        assert error.startswith("public_key_conflict: "), error
        assert key in error and "does not match this signer's public key" in error
        assert "signing.key_file" in error  # what to do
        assert doc["passes"] == 0 and doc["run_manifest_key"] is not None
        assert '"event": "run_aborted"' in doc["_proc"].stderr
    ids = {p["id"] for p in r.json()["passes"]}
    conn = sqlite3.connect(f"file:{cfg.parent / 'catalog.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT pass_id, state, attempts FROM passes").fetchall()
    finally:
        conn.close()
    assert {(pid, state, attempts) for pid, state, attempts in rows if pid in ids} == {
        (pid, "pending", 0) for pid in ids
    }


# -- only signed run manifests are adopted into the chain (real SeaweedFS) ---------------


def _run_keys(s3: Any, bucket: str) -> list[str]:
    return [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="cli/runs/")
        for o in page.get("Contents", [])
        if o["Key"].endswith(".json")
    ]


def _plant(s3: Any, bucket: str, head: str, name: str, sig: bytes | None) -> str:
    """Put a run manifest that follows ``head`` in its chain, as someone who can write
    to the bucket can: a copy of ``head`` with another run id, previous naming ``head``,
    and ``sig`` (if any) as its detached signature."""
    body = s3.get_object(Bucket=bucket, Key=head)["Body"].read()
    doc = json.loads(body)
    doc["run_id"] = f"{doc['run_id'].split('-', 1)[0]}-{name}"
    doc["previous"] = {"key": head, "sha256": hashlib.sha256(body).hexdigest()}
    data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    key = f"{head.rsplit('/', 1)[0]}/{doc['run_id']}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    if sig is not None:
        s3.put_object(Bucket=bucket, Key=key + ".sig", Body=sig)
    return key


def _events(proc: Any, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    return [e for e in lines if e["event"] == event]


def _chain_from_head(s3: Any, bucket: str, head: str) -> list[tuple[str, bytes, bytes]]:
    """Each run manifest from ``head`` back along the previous links, with its bytes
    and its detached signature's."""
    links = []
    key: str | None = head
    while key is not None:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        sig = s3.get_object(Bucket=bucket, Key=key + ".sig")["Body"].read()
        links.append((key, data, sig))
        previous = json.loads(data)["previous"]
        key = previous["key"] if previous else None
    return links


def test_planted_run_manifests_are_not_adopted_into_the_chain(
    cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
) -> None:
    """After a first run, an unsigned run manifest and one whose signature is not by
    a trusted key are planted under runs/, each naming the head as its previous. The
    next two runs chain after the head and their own manifests only (logging each
    planted one as not adopted, with its reason); once the planter deletes its
    objects (it can: they carry no retention), `verify --all` finds no broken link,
    and every manifest of the chain verifies under the signer's key."""
    cfg, env = cli_config
    _lock(cfg)
    archive_with_cli(cfg, env, sandbox_http, runs=1)
    s3 = seaweedfs.client()
    [first] = _run_keys(s3, s3_bucket)
    unsigned = _plant(s3, s3_bucket, first, "planted-unsigned", None)
    forged = _plant(s3, s3_bucket, first, "planted-forged", Signer.generate().sign(b"other"))

    second = _run(cfg, env, pii_watch)
    assert second["_proc"].returncode == 0, second["_proc"].stderr[-3000:]
    refused = {
        (e["key"], e["reason"]) for e in _events(second["_proc"], "run_manifest_not_adopted")
    }
    assert refused == {(unsigned, "unsigned"), (forged, "bad_signature")}
    assert _events(second["_proc"], "run_manifest_adopted") == []
    archive_with_cli(cfg, env, sandbox_http, runs=1)

    for key in (unsigned, forged, forged + ".sig"):
        s3.delete_object(Bucket=s3_bucket, Key=key)
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    auditor = {k: v for k, v in env.items() if k.startswith("AWS_")}
    proc = run_cli(
        ["verify", "--all", "--json", "--config", str(cfg), "--public-key", str(pub)],
        env=auditor,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert [f for f in report["findings"] if f["kind"].startswith("chain")] == []
    assert (proc.returncode, report["run_manifests_checked"]) == (0, 3), report

    conn = sqlite3.connect(f"file:{cfg.parent / 'catalog.db'}?mode=ro", uri=True)
    try:
        [(head,)] = conn.execute("SELECT manifest_key FROM runs ORDER BY finished_at DESC LIMIT 1")
    finally:
        conn.close()
    chain = _chain_from_head(s3, s3_bucket, head)
    assert [key for key, _, _ in chain][-1] == first and len(chain) == 3
    assert all(TEST_SIGNER.verifier.verify(data, sig) for _, data, sig in chain)
