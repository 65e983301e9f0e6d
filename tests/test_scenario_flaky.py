"""End to end under the flakiness real upstream answers show: the sandbox injects, on
20 % of details reads (seeded), a held slot answered ``null``, ``images: {}`` inside
the window, a clock 31 days ahead (``images: {}`` and a ``Date`` to match), 429, 503
and bodies cut off mid-image. The ``idpass-archiver`` CLI runs several times over 60
passes against real SeaweedFS; afterwards, from the bucket alone:

* every pass whose images the sandbox holds is archived with every slot it holds,
  byte for byte equal to the sandbox's own images;
* nothing else is archived: retention 0, closed windows and passes not ``complete``
  have no manifest;
* ``verify --all --deep`` is clean.

A transient ``null`` or ``{}`` is indistinguishable, in one answer, from a slot or
window that is really gone: only reading again inside the window tells them apart.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.cli import TEST_SIGNER, run_cli

DETAILS = "/idpass/details"
PREFIX = "cli"  # the prefix cli_config writes under
RUNS = 4
FLAKY_RATES = {
    "null_slot": 0.04,
    "empty_images": 0.04,
    "clock_skew": 0.03,
    "429": 0.03,
    "503": 0.03,
    "cut_body": 0.03,
}
assert abs(sum(FLAKY_RATES.values()) - 0.20) < 1e-9
SLOT_SETS = (
    ["id_photo_cropped"],
    ["probe", "id_photo_cropped"],
    ["document_1_front", "document_1_photo", "id_photo_cropped"],
    ["probe", "document_1_photo", "document_2_photo", "id_photo", "id_photo_cropped"],
)


def _create(http: httpx.Client, count: int, **body: Any) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        slots = SLOT_SETS[i % len(SLOT_SETS)]
        r = http.post("/_sandbox/passes", json={"slots": slots, **body})
        assert r.status_code == 201, r.text
        out += [{**p, "slots": slots} for p in r.json()["passes"]]
    return out


def _passes(http: httpx.Client) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """60 passes: (40 whose images the sandbox serves, 20 it never will)."""
    now = datetime.now(UTC)
    recent = (now - timedelta(days=2)).isoformat()
    held = _create(http, 40, image_retention_days=30, completed_at=recent)
    never = _create(http, 5, image_retention_days=0, completed_at=recent)
    never += _create(
        http, 5, image_retention_days=30, completed_at=(now - timedelta(days=40)).isoformat()
    )
    for status in ("in_progress", "expired", "cancelled", "failed", "opened"):
        never += _create(http, 2, status=status, image_retention_days=30)
    return held, never


def _bucket_manifests(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=f"{PREFIX}/passes/"
    )
    out = {}
    for page in pages:
        for o in page.get("Contents", []):
            if o["Key"].endswith("/manifest.json"):
                doc = json.loads(client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
                out[doc["pass_id"]] = doc
    return out


def _verify(cfg: Path, env: dict[str, str], tmp_path: Path) -> tuple[int, Any]:
    """``verify --all --deep`` as an auditor runs it: read access and the public key."""
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    auditor = {k: v for k, v in env.items() if k.startswith("AWS_")}
    proc = run_cli(
        ["verify", "--config", str(cfg), "--public-key", str(pub), "--json", "--all", "--deep"],
        env=auditor,
        timeout=240,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def _run_env(env: dict[str, str]) -> dict[str, str]:
    settings: dict[str, float] = {
        "API__MAX_ATTEMPTS": 5,
        "API__RETRY_BASE_SECONDS": 0.2,
        "API__RETRY_MAX_WAIT_SECONDS": 2,
        "PIPELINE__CONCURRENCY": 1,
        "PIPELINE__RETRY_BASE_SECONDS": 1,
        # a pass answered with no images or a null slot inside its window is read
        # again before it settles: three confirming reads, a second apart
        "PIPELINE__CONFIRM_READS": 3,
        "PIPELINE__CONFIRM_SPACING_SECONDS": 1,
    }
    return {**env, **{f"IDPASS_ARCHIVER_{k}": str(v) for k, v in settings.items()}}


def test_flaky_upstream_loses_nothing(
    cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    cfg, env = cli_config
    held, never = _passes(sandbox_http)
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    imported = run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert imported.returncode == 0, imported.stderr[-2000:]

    r = sandbox_http.post(
        "/_sandbox/fault-rates",
        json={"rates": FLAKY_RATES, "seed": 90, "paths": [DETAILS], "retry_after": 0.2},
    )
    assert r.status_code == 200, r.text
    client, run_env = seaweedfs.client(), _run_env(env)
    summaries = []
    for _ in range(RUNS):
        proc = run_cli(
            ["run", "--config", str(cfg), "--json"], env=run_env, watch=pii_watch, timeout=180
        )
        assert proc.returncode in (0, 1, 4), proc.stderr[-3000:]
        summaries.append(json.loads(proc.stdout))
        time.sleep(1.2)  # pipeline.retry_base_seconds: passes to retry are due again
    faults = sandbox_http.get("/_sandbox/fault-rates").json()
    print(f"flaky: API {faults['faulted']}/{faults['calls']} faulted {faults['injected']}")
    print(f"flaky: runs' counts {[s['counts'] for s in summaries]}")
    assert set(faults["injected"]) == set(FLAKY_RATES)  # every kind really happened
    assert not any(s["systemic_error"] for s in summaries)

    manifests = _bucket_manifests(client, s3_bucket)
    # nothing archived that the sandbox never served images for
    wrongly = sorted(p["id"] for p in never if p["id"] in manifests)
    assert not wrongly, f"{len(wrongly)} pass(es) without images have a manifest"

    code, doc = _verify(cfg, env, tmp_path)
    assert (code, doc["findings"]) == (0, []), doc["finding_counts"]

    # every pass the sandbox holds images for: archived, every slot, byte for byte
    problems: Counter[str] = Counter()
    for p in held:
        manifest = manifests.get(p["id"])
        if manifest is None:
            problems["not archived"] += 1
            continue
        stored = {o["slot"]: o["key"] for o in manifest["objects"] if o.get("slot")}
        if set(stored) != set(p["slots"]):
            problems["archived without some slots it holds"] += 1
        for slot in set(stored) & set(p["slots"]):
            truth = sandbox_http.get(f"/_sandbox/passes/{p['id']}/images/{slot}").content
            data = client.get_object(Bucket=s3_bucket, Key=stored[slot])["Body"].read()
            if data != truth:
                problems["stored image differs from the sandbox's"] += 1
    assert not problems, f"of {len(held)} passes with images: {dict(problems)}"
