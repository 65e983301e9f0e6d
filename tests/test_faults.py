"""The archive under faults, as cron runs it: the ``idpass-archiver`` CLI in subprocesses
against the real sandbox (random API faults) and SeaweedFS behind a fault-injecting
proxy (tests/fixtures/s3proxy.py), checked afterwards from the bucket alone.

* fault soak: 200 passes, 20 % of API requests and 10 % of S3 requests faulted; at
  most 3 runs archive all, ``verify --deep`` is clean, every object has one version;
* crash consistency: 20 runs over 100 passes, each SIGKILLed at a seeded random
  moment, then reruns to completion: each pass archived exactly once, every orphan
  left on the way listed by ``verify``, catalog == S3, ``catalog rebuild`` agrees;
* listing: 20 runs over 150 passes, each SIGKILLed after committing some, then a clean
  run: every pass manifest is listed by a signed run manifest (the killed runs' as
  recovered), ``verify --all`` is clean;
* overlap: two ``run`` at once on one SQLite catalog: one exits 5, nothing doubled;
* graceful stop: SIGTERM to a ``run``: exit within ``stop_grace_seconds`` plus a
  margin, the run recorded, passes archived or given back.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.cli import TEST_SIGNER, cli_env, run_cli
from tests.fixtures.s3proxy import S3FaultProxy
from tests.helpers import signed_run_manifests, unlisted_manifests

DETAILS = "/idpass/details"
PREFIX = "cli"  # the prefix cli_config writes under
SIG = "/manifest.json.sig"
# What the soak injects into the API: every transient kind. The image kinds
# (invalid_base64, truncated_base64, not_jpeg) are permanent by design (the pass is
# `failed` and needs a person, README "bad input"), so they cannot be in a soak that
# must end with every pass archived; tests/sandbox/test_fault_rates.py covers them.
SOAK_API_RATES = {
    "429": 0.03,
    "500": 0.03,
    "503": 0.03,
    "latency": 0.03,
    "drop": 0.03,
    "wrong_content_type": 0.02,
    "html_error": 0.02,
    "invalid_json": 0.01,
}
assert abs(sum(SOAK_API_RATES.values()) - 0.20) < 1e-9


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
def api_faults(sandbox_http: httpx.Client) -> Iterator[Any]:
    """Set the sandbox's random faults on /idpass/details; cleared after the test."""

    def set_rates(**body: Any) -> None:
        r = sandbox_http.post("/_sandbox/fault-rates", json={"paths": [DETAILS], **body})
        assert r.status_code == 200, r.text

    yield set_rates
    sandbox_http.delete("/_sandbox/fault-rates")


def _passes(http: httpx.Client, count: int, slots: list[str], ledger: Path) -> list[str]:
    r = http.post(
        "/_sandbox/passes", json={"count": count, "image_retention_days": 30, "slots": slots}
    )
    assert r.status_code == 201, r.text
    ledger.write_bytes(http.get("/_sandbox/ledger").content)
    return [p["id"] for p in r.json()["passes"]]


def _import(cfg: Path, env: dict[str, str], ledger: Path) -> None:
    proc = run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _run_env(env: dict[str, str], proxy: S3FaultProxy, **settings: Any) -> dict[str, str]:
    """The run's environment: S3 through the proxy, plus IDPASS_ARCHIVER_* overrides."""
    out = {**env, "IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL": proxy.endpoint_url}
    for name, value in settings.items():
        section, key = name.split("__", 1)
        out[f"IDPASS_ARCHIVER_{section.upper()}__{key.upper()}"] = str(value)
    return out


def _popen(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "archiver", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )


def _events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _rows(db: Path) -> dict[str, dict[str, Any]]:
    """The catalog's passes, read-only, straight from SQLite."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT pass_id, state, lease_owner, manifest_key, manifest_sha256, last_reason "
            "FROM passes"
        ).fetchall()
    finally:
        conn.close()
    return {r["pass_id"]: dict(r) for r in rows}


def _count(db: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def _archived(db: Path) -> int:
    return _count(db, "SELECT count(*) FROM passes WHERE state = 'archived'")


class Bucket:
    """What the bucket holds, read directly from SeaweedFS (not through the proxy)."""

    def __init__(self, seaweedfs: Any, bucket: str) -> None:
        self.client = seaweedfs.client()
        self.seaweedfs = seaweedfs
        self.bucket = bucket

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2")
        return [
            o["Key"]
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix)
            for o in page.get("Contents", [])
        ]

    def read(self, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body

    def manifests(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """pass id -> (SHA-256 of its manifest.json, the manifest)."""
        out = {}
        for key in self.keys(f"{PREFIX}/passes/"):
            if key.endswith("/manifest.json"):
                data = self.read(key)
                doc = json.loads(data)
                out[doc["pass_id"]] = (hashlib.sha256(data).hexdigest(), doc)
        return out

    def unlisted(self) -> set[str]:
        """Keys under passes/ that no manifest accounts for: the orphans, by our own count."""
        listed: set[str] = set()
        for _, doc in self.manifests().values():
            mkey = f"{PREFIX}/passes/{doc['pass_id']}/manifest.json"
            listed |= {mkey, mkey + ".sig", *(o["key"] for o in doc["objects"])}
        return set(self.keys(f"{PREFIX}/passes/")) - listed

    def versions(self) -> dict[str, int]:
        counts: dict[str, int] = self.seaweedfs.versions_per_key(self.bucket, f"{PREFIX}/")
        return counts

    def run_manifests(self) -> list[dict[str, Any]]:
        return [
            json.loads(self.read(k)) for k in self.keys(f"{PREFIX}/runs/") if k.endswith(".json")
        ]


def _verify(cfg: Path, env: dict[str, str], tmp_path: Path, *extra: str) -> tuple[int, Any]:
    """``verify`` as an auditor runs it: read access and the public key, nothing else."""
    pub = tmp_path / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    auditor = {k: v for k, v in env.items() if k.startswith("AWS_")}
    proc = run_cli(
        ["verify", "--config", str(cfg), "--public-key", str(pub), "--json", *extra],
        env=auditor,
        timeout=240,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def _assert_written_once(bucket: Bucket) -> int:
    """Every object under the prefix has exactly one version, except a pass's detached
    signature, which a pass whose earlier attempt never committed its manifest may
    legitimately rewrite. Returns how many signatures were rewritten."""
    versions = bucket.versions()
    doubled = {k: n for k, n in versions.items() if n != 1 and not k.endswith(SIG)}
    assert not doubled, f"objects written more than once: {doubled}"
    return sum(1 for k, n in versions.items() if k.endswith(SIG) and n > 1)


def _assert_catalog_is_s3(db: Path, bucket: Bucket, ids: list[str]) -> None:
    """Every pass archived in the catalog, with the manifest key and hash S3 holds."""
    rows, manifests = _rows(db), bucket.manifests()
    assert sorted(manifests) == sorted(ids)
    for pid in ids:
        row = rows[pid]
        assert row["state"] == "archived", row
        assert row["lease_owner"] is None
        assert row["manifest_key"] == f"{PREFIX}/passes/{pid}/manifest.json"
        assert row["manifest_sha256"] == manifests[pid][0]


# --- the fault soak ----------------------------------------------------------------------

SOAK_PASSES = 200
SOAK_MAX_RUNS = 3


def test_fault_soak(
    cli_config, sandbox_http, api_faults, s3_proxy, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """200 passes, 20 % of API requests and 10 % of S3 requests faulted (seeded): at
    most 3 runs archive every pass, `verify --deep` is clean with the public key alone,
    and no object was written twice or conflicts."""
    cfg, env = cli_config
    ledger = tmp_path / "ledger.jsonl"
    half = SOAK_PASSES // 2
    ids = _passes(sandbox_http, half, ["id_photo_cropped"], ledger)
    ids += _passes(sandbox_http, half, ["id_photo_cropped", "document_1_photo"], ledger)
    _import(cfg, env, ledger)

    api_faults(rates=SOAK_API_RATES, seed=2026, latency_seconds=[0.2, 1.0], retry_after=0.5)
    s3_proxy.configure(rate=0.10, seed=2026, stall_seconds=1.6)
    run_env = _run_env(
        env,
        s3_proxy,
        storage__read_timeout_seconds=1.0,
        storage__connect_timeout_seconds=2.0,
        api__max_attempts=5,
        api__retry_base_seconds=0.2,
        api__retry_max_wait_seconds=5,
        api__read_timeout_seconds=10,
        pipeline__concurrency=8,
        pipeline__retry_base_seconds=1,
    )
    summaries = []
    for _ in range(SOAK_MAX_RUNS):
        proc = run_cli(
            ["run", "--config", str(cfg), "--json"], env=run_env, watch=pii_watch, timeout=300
        )
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        summaries.append(json.loads(proc.stdout))
        if _archived(cfg.parent / "catalog.db") == SOAK_PASSES:
            break
        time.sleep(1.2)  # pipeline.retry_base_seconds: the passes to retry are due again
    print(f"soak: {len(summaries)} run(s), counts {[s['counts'] for s in summaries]}")
    print(f"soak: retried or failed: {[f for s in summaries for f in s['failed']]}")
    for f in [f for s in summaries for f in s["failed"]]:  # what S3 saw of a retried pass
        print("soak: S3 journal", [e for e in s3_proxy.journal if f["pass_id"] in e[2]])

    # the faults really happened, at the rates asked for
    api = sandbox_http.get("/_sandbox/fault-rates").json()
    s3 = s3_proxy.stats.to_json()
    print(f"soak: API {api['faulted']}/{api['calls']} faulted {api['injected']}")
    print(f"soak: S3 {s3['faulted']}/{s3['requests']} faulted {s3['faults']}")
    assert 0.12 <= api["faulted"] / api["calls"] <= 0.28
    assert set(api["injected"]) == set(SOAK_API_RATES)
    assert 0.07 <= s3["faulted"] / s3["requests"] <= 0.13
    assert set(s3["faults"]) == {"slowdown", "internal", "reset", "stall"}

    # every pass archived, once, and nothing conflicts
    db = cfg.parent / "catalog.db"
    bucket = Bucket(seaweedfs, s3_bucket)
    _assert_catalog_is_s3(db, bucket, ids)
    reasons = [f["reason"] for s in summaries for f in s["failed"]]
    assert not [r for r in reasons if "conflict" in r], reasons
    assert not any(s["systemic_error"] for s in summaries)
    rewritten = _assert_written_once(bucket)
    print(f"soak: signatures rewritten: {rewritten}")

    code, doc = _verify(cfg, env, tmp_path, "--deep")
    assert (code, doc["findings"]) == (0, []), doc["finding_counts"]
    assert doc["passes_checked"] == SOAK_PASSES and doc["bytes_hashed"] > 0
    assert doc["run_manifests_checked"] == len(summaries)


# --- crash consistency ---------------------------------------------------------------

CRASH_PASSES = 100
KILLS = 20


def test_crash_consistency(
    cli_config, sandbox_http, api_faults, s3_proxy, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """20 runs over 100 passes, each SIGKILLed at a random moment (seeded, 0.2-3 s in),
    each the rerun of the last; then reruns to completion. Every orphan the kills left
    is listed by verify; at the end each pass is archived exactly once, every manifest
    matches its objects, the catalog agrees with S3, and `catalog rebuild` from the
    manifests alone gives the same archive."""
    cfg, env = cli_config
    db = cfg.parent / "catalog.db"
    ledger = tmp_path / "ledger.jsonl"
    ids = _passes(sandbox_http, CRASH_PASSES, ["id_photo_cropped", "document_1_photo"], ledger)
    _import(cfg, env, ledger)
    bucket = Bucket(seaweedfs, s3_bucket)
    # slow enough that the kills land mid-work: each details read 0.2-0.8 s, each S3
    # answer up to 0.15 s late (so a kill often falls between a pass's writes)
    s3_proxy.configure(latency=(0.0, 0.15))
    run_env = _run_env(env, s3_proxy, pipeline__concurrency=4)

    began = time.monotonic()
    log = []
    released = 0  # leases of killed runs, given back by the next run (it holds the lock)
    for i in range(KILLS):
        seed = 7000 + i
        api_faults(rates={"latency": 1.0}, latency_seconds=[0.2, 0.8], seed=seed)
        delay = random.Random(seed).uniform(0.2, 3.0)
        proc = _popen(["run", "--config", str(cfg), "--json"], run_env)
        try:
            proc.wait(timeout=delay)
            finished = True  # nothing left to do, or it was quicker than the kill
        except subprocess.TimeoutExpired:
            proc.kill()
            finished = False
        out, err = proc.communicate(timeout=30)
        pii_watch.output(f"crash run {i} stdout", out)
        pii_watch.output(f"crash run {i} stderr", err)
        assert "Traceback" not in err, err[-3000:]
        released += sum(
            e.get("count", 0) for e in _events(err) if e["event"] == "stale_leases_released"
        )
        log.append((round(delay, 2), finished, _archived(db), len(bucket.unlisted())))
    killed_loop = time.monotonic() - began
    print(f"crash: (delay, finished, archived, orphans) per kill: {log}")
    print(f"crash: stale leases released by reruns: {released}")
    assert released > 0
    assert sum(1 for _, finished, _, _ in log if not finished) >= KILLS // 2

    # what the kills left: every object without a manifest is listed by verify
    left = bucket.unlisted()
    code, doc = _verify(cfg, env, tmp_path)
    reported = {f["key"] for f in doc["findings"] if f["kind"] == "orphan"}
    print(f"crash: after the kills, {len(left)} orphan(s); verify reported {len(reported)}")
    assert reported == left
    # passes a killed run committed are listed by no run manifest until a later run
    # lists them as recovered: verify says so (and nothing else) until then
    unlisted = {f["pass_id"] for f in doc["findings"] if f["kind"] == "unlisted"}
    assert code == (1 if left or unlisted else 0)
    assert {f["kind"] for f in doc["findings"]} <= {"orphan", "unlisted"}, doc["finding_counts"]
    assert any(orphans for *_, orphans in log), "no kill fell between a pass's writes"

    # reruns to completion, without the slow API
    api_faults(rates={"latency": 0.0})
    for _ in range(3):
        proc = run_cli(["run", "--config", str(cfg), "--json"], env=run_env, watch=pii_watch)
        assert proc.returncode in (0, 1), proc.stderr[-3000:]
        if proc.returncode == 0 and _archived(db) == CRASH_PASSES:
            break
    total = time.monotonic() - began
    print(f"crash: kill loop {killed_loop:.0f} s, total {total:.0f} s")
    assert killed_loop < 150

    # exactly once, consistent, verifiable
    _assert_catalog_is_s3(db, bucket, ids)
    rewritten = _assert_written_once(bucket)
    print(f"crash: signatures rewritten for {rewritten} pass(es) whose manifest never landed")
    assert bucket.unlisted() == set()
    code, doc = _verify(cfg, env, tmp_path, "--deep")
    assert (code, doc["findings"]) == (0, []), doc["finding_counts"]
    assert doc["passes_checked"] == CRASH_PASSES
    manifests = bucket.manifests()
    for run in bucket.run_manifests():  # what completed runs recorded agrees with S3
        for p in run["passes"]:
            assert p["manifest_sha256"] == manifests[p["pass_id"]][0]

    # the catalog, rebuilt from the manifests alone into a new file, says the same
    rebuilt = tmp_path / "rebuilt.db"
    rebuild_env = {**env, "IDPASS_ARCHIVER_CATALOG__URL": f"sqlite:///{rebuilt}"}
    proc = run_cli(["catalog", "rebuild", "--config", str(cfg), "--json"], env=rebuild_env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {
        "manifests": CRASH_PASSES,
        "recorded": CRASH_PASSES,
        "rejected": [],
    }

    def view(path: Path) -> dict[str, tuple[Any, ...]]:
        return {
            pid: (r["state"], r["manifest_key"], r["manifest_sha256"])
            for pid, r in _rows(path).items()
        }

    assert view(rebuilt) == view(db)


LISTING_PASSES = 150


def test_passes_committed_by_killed_runs_are_listed_by_a_later_run_manifest(
    cli_config, sandbox_http, api_faults, s3_proxy, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """20 runs over 150 passes, each SIGKILLed mid-run once it has committed 1-6 more
    passes (seeded), so each commits passes and dies before storing its run manifest;
    then a clean run. At the end every pass manifest in the bucket, by key and
    SHA-256, is listed by a signed run manifest (the auditor recipe's step 6): those
    the killed runs committed as ``recovered``. ``verify --all`` is clean."""
    cfg, env = cli_config
    db = cfg.parent / "catalog.db"
    ledger = tmp_path / "ledger.jsonl"
    ids = _passes(sandbox_http, LISTING_PASSES, ["id_photo_cropped"], ledger)
    _import(cfg, env, ledger)
    run_env = _run_env(env, s3_proxy, pipeline__concurrency=4)
    finished = 0
    for i in range(KILLS):
        seed = 8000 + i
        api_faults(rates={"latency": 1.0}, latency_seconds=[0.1, 0.5], seed=seed)
        # killed on progress, not after a fixed delay: on a loaded machine a run may
        # take seconds to start
        target = _archived(db) + random.Random(seed).randint(1, 6)
        proc = _popen(["run", "--config", str(cfg), "--json"], run_env)
        deadline = time.monotonic() + 60
        while proc.poll() is None and _archived(db) < target and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.kill()
        else:
            finished += 1
        out, err = proc.communicate(timeout=30)
        pii_watch.output(f"listing run {i} stdout", out)
        pii_watch.output(f"listing run {i} stderr", err)
        assert "Traceback" not in err, err[-3000:]
    by_killed = {pid for pid, r in _rows(db).items() if r["state"] == "archived"}
    print(f"listing: {len(by_killed)} pass(es) committed by killed runs; {finished} finished")
    assert finished == 0, "a run finished inside the kill loop: raise the latency"
    assert len(by_killed) >= KILLS, "the kills left too few committed passes"
    client = seaweedfs.client()
    assert unlisted_manifests(client, s3_bucket, PREFIX, TEST_SIGNER.verifier), (
        "the killed runs left every pass listed: the kills proved nothing"
    )

    api_faults(rates={"latency": 0.0})
    proc = run_cli(["run", "--config", str(cfg), "--json"], env=run_env, watch=pii_watch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _archived(db) == LISTING_PASSES
    assert sorted(Bucket(seaweedfs, s3_bucket).manifests()) == sorted(ids)

    assert unlisted_manifests(client, s3_bucket, PREFIX, TEST_SIGNER.verifier) == []
    runs = signed_run_manifests(client, s3_bucket, PREFIX, TEST_SIGNER.verifier)
    recovered = {p.pass_id for run in runs for p in run.passes if p.recovered}
    assert recovered == by_killed
    # the catalog knows they are listed now: the next run recovers nothing
    assert _count(db, "SELECT count(*) FROM passes WHERE listed_run_id IS NULL") == 0
    proc = run_cli(["run", "--config", str(cfg), "--json"], env=run_env, watch=pii_watch)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [e for e in _events(proc.stderr) if e["event"] == "unlisted_passes_recovered"]
    code, doc = _verify(cfg, env, tmp_path, "--all")
    assert (code, doc["findings"]) == (0, []), doc["finding_counts"]


# --- overlapping runs ------------------------------------------------------------------


def test_overlapping_runs_on_sqlite(
    cli_config, sandbox_http, api_faults, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """Two `run` started at once on one SQLite catalog (the API slowed so they
    overlap): one archives everything, the other exits 5 with the documented message
    and does nothing; no object, run or pass is doubled."""
    cfg, env = cli_config
    ledger = tmp_path / "ledger.jsonl"
    ids = _passes(sandbox_http, 12, ["id_photo_cropped"], ledger)
    _import(cfg, env, ledger)
    api_faults(rates={"latency": 1.0}, latency_seconds=0.6, seed=1)
    run_env = {**env, "IDPASS_ARCHIVER_PIPELINE__CONCURRENCY": "2"}
    procs = [_popen(["run", "--config", str(cfg), "--json"], run_env) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for n, (out, err) in enumerate(outs):
        pii_watch.output(f"overlap run {n} stdout", out)
        pii_watch.output(f"overlap run {n} stderr", err)
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 5], [e[-2000:] for _, e in outs]
    winner, loser = (outs[0], outs[1]) if codes[0] == 0 else (outs[1], outs[0])
    assert "another run holds the catalog lock" in loser[1]
    assert "this run does nothing and exits" in loser[1]
    assert loser[0] == "" and "Traceback" not in loser[1]
    summary = json.loads(winner[0])
    assert summary["counts"]["archived"] == len(ids)

    bucket = Bucket(seaweedfs, s3_bucket)
    db = cfg.parent / "catalog.db"
    _assert_catalog_is_s3(db, bucket, ids)
    assert _assert_written_once(bucket) == 0
    assert len(bucket.run_manifests()) == 1
    assert _count(db, "SELECT count(*) FROM runs") == 1


# --- graceful stop ---------------------------------------------------------------------

GRACE = 2
MARGIN = 4  # run manifest, catalog, interpreter exit


def test_sigterm_stops_a_run_within_the_grace_period(
    cli_config, sandbox_http, api_faults, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """SIGTERM to a `run` in progress (details reads of 0.3-6 s): it exits within
    stop_grace_seconds plus a margin, records the run (catalog row, signed run manifest
    in S3) as stopped early; each pass is archived or back to due with its lease
    released; the next run archives the rest, once."""
    cfg, env = cli_config
    db = cfg.parent / "catalog.db"
    ledger = tmp_path / "ledger.jsonl"
    ids = _passes(sandbox_http, 12, ["id_photo_cropped"], ledger)
    _import(cfg, env, ledger)
    api_faults(rates={"latency": 1.0}, latency_seconds=[0.3, 6.0], seed=3)
    run_env = {
        **env,
        "IDPASS_ARCHIVER_PIPELINE__CONCURRENCY": "3",
        "IDPASS_ARCHIVER_SCHEDULE__STOP_GRACE_SECONDS": str(GRACE),
    }
    proc = _popen(["run", "--config", str(cfg), "--json"], run_env)
    deadline = time.monotonic() + 60
    while _archived(db) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    pii_watch.output("sigterm run stdout", out)
    pii_watch.output("sigterm run stderr", err)
    print(f"sigterm: exit {proc.returncode} {took:.2f} s after the signal")
    assert took <= GRACE + MARGIN, err[-3000:]
    summary = json.loads(out)
    assert proc.returncode == summary["exit_code"] and proc.returncode in (0, 1)
    assert summary["stopped_early"] is True
    events = Counter(e["event"] for e in _events(err))
    assert events["stop_requested"] == 1 and events["run_finished"] == 1

    # the run is recorded: catalog row and signed run manifest
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT manifest_key, exit_code FROM runs WHERE run_id = ?", (summary["run_id"],)
        ).fetchone()
    finally:
        conn.close()
    assert row == (summary["run_manifest_key"], summary["exit_code"])
    bucket = Bucket(seaweedfs, s3_bucket)
    [run] = bucket.run_manifests()
    assert run["run_id"] == summary["run_id"] and run["stopped_early"] is True

    # each pass archived, or given back (no lease) and due again
    rows = _rows(db)
    manifests = bucket.manifests()
    archived = [p for p in ids if rows[p]["state"] == "archived"]
    left = [p for p in ids if rows[p]["state"] != "archived"]
    print(f"sigterm: {len(archived)} archived, {len(left)} given back")
    assert archived and left
    assert all(rows[p]["lease_owner"] is None for p in ids)
    # (confirming: stopped between a read with a slot null and its confirming read)
    assert all(rows[p]["state"] in ("pending", "retry", "confirming") for p in left)
    assert all(rows[p]["manifest_sha256"] == manifests[p][0] for p in archived)
    committed_late = [p for p in left if p in manifests]  # abandoned after its manifest
    assert len(committed_late) <= 1

    # the next run finishes them, writing nothing twice
    api_faults(rates={"latency": 0.0})
    proc2 = run_cli(["run", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    again = json.loads(proc2.stdout)
    assert again["counts"]["archived"] == len(left)
    assert again["already_archived"] == len(committed_late)
    _assert_catalog_is_s3(db, bucket, ids)
    _assert_written_once(bucket)
    code, doc = _verify(cfg, env, tmp_path)
    assert (code, doc["findings"]) == (0, []), doc["finding_counts"]
