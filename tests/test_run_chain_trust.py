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
import json
from pathlib import Path

import orjson

from archiver import config

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
