"""Systemic failures are systemic: the storage unreachable or refusing, and the API
refusing the token, end a run with exit code 3, and the run is still seen.

The ``idpass-archiver`` CLI in subprocesses, against the real sandbox and SeaweedFS
(the session's, behind the fault proxy, or one of the test's own that it kills). In
every case: exit 3; ``run --json`` (``backfill --json``) prints its summary with
``systemic_error``; the run is in the catalog's ``runs`` table; the metrics textfile
says exit code 3 and no success (what the alerts in deploy/prometheus/alerts.yaml
read); the log has ``run_finished``; no pass spent an attempt on it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from prometheus_client.parser import text_string_to_metric_families

from archiver.sandbox.seaweedfs import SeaweedFS
from tests.fixtures.cli import TEST_SIGNER, cli_env, run_cli
from tests.helpers import signed_run_manifests

DETAILS = "/idpass/details"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _passes(http: httpx.Client, cfg: Path, env: dict[str, str], count: int) -> list[str]:
    """``count`` new sandbox passes, imported into the catalog."""
    r = http.post(
        "/_sandbox/passes",
        json={"count": count, "image_retention_days": 30, "slots": ["id_photo_cropped"]},
    )
    assert r.status_code == 201, r.text
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(http.get("/_sandbox/ledger").content)
    proc = run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [p["id"] for p in r.json()["passes"]]


def _with_metrics(env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path]:
    prom = tmp_path / "textfile" / "idpass-archiver.prom"
    prom.parent.mkdir(exist_ok=True)
    return {**env, "IDPASS_ARCHIVER_METRICS__TEXTFILE_PATH": str(prom)}, prom


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_systemic(
    proc: subprocess.CompletedProcess[str], db: Path, prom: Path, reason: str, mode: str = "run"
) -> dict[str, Any]:
    """Exit 3, and the run seen everywhere it should be; returns the JSON summary."""
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 3, proc.stderr[-3000:]
    doc: dict[str, Any] = json.loads(proc.stdout)
    assert doc["exit_code"] == 3
    assert doc["systemic_error"].startswith(f"{reason}: "), doc["systemic_error"]
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    [finished] = [e for e in events if e["event"] == "run_finished"]
    assert (finished["run_id"], finished["exit_code"]) == (doc["run_id"], 3)
    assert finished["systemic_error"].startswith(f"{reason}: ")  # the log masks ids
    [(code, summary, key)] = _query(
        db, "SELECT exit_code, summary_json, manifest_key FROM runs WHERE run_id = ?", doc["run_id"]
    )
    assert (code, key) == (3, doc["run_manifest_key"])
    assert json.loads(summary)["systemic_error"] == doc["systemic_error"]
    got = _samples(prom.read_text())
    labels = (("mode", mode),)
    assert got[("idpass_archiver_last_run_exit_code", labels)] == 3
    assert got[("idpass_archiver_last_run_success", labels)] == 0
    assert ("idpass_archiver_last_success_timestamp_seconds", labels) not in got
    return doc


def assert_untouched(db: Path, ids: list[str]) -> None:
    """The passes are due again as they were: no lease held, no attempt spent (a pass
    whose first read had a null slot waits for its confirming read)."""
    rows = _query(db, "SELECT pass_id, state, attempts, lease_owner FROM passes")
    by_id = {pid: (state, attempts, owner) for pid, state, attempts, owner in rows}
    got = {pid: by_id[pid] for pid in ids}
    assert {pid: (s, a, o) for pid, (s, a, o) in got.items() if s != "confirming"} == {
        pid: ("pending", 0, None) for pid, (s, _, _) in got.items() if s != "confirming"
    }
    assert all((a, o) == (0, None) for s, a, o in got.values() if s == "confirming"), got


# --- at the start: before any pass -----------------------------------------------------


@pytest.mark.parametrize("fault", ["refused_port", "5xx_storm", "wrong_credentials"])
def test_storage_unreachable_or_refusing_at_start(
    fault, cli_config, sandbox_http, s3_proxy, tmp_path, pii_watch
):
    """The store refuses connections, answers every request with a 500, or refuses
    the credentials: the run stops before its first pass (the public key's put
    fails), exit 3, with the run recorded in the catalog (no run manifest: the store
    cannot hold it, and the summary says so), metrics, run_finished, JSON."""
    cfg, env = cli_config
    ids = _passes(sandbox_http, cfg, env, 3)
    env, prom = _with_metrics(env, tmp_path)
    reason = "store_unavailable"
    if fault == "refused_port":
        env["IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    elif fault == "5xx_storm":
        s3_proxy.configure(rate=1.0, kinds=("internal",))
        env["IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL"] = s3_proxy.endpoint_url
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret-key"
        reason = "store_access_denied"
    proc = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    doc = assert_systemic(proc, cfg.parent / "catalog.db", prom, reason)
    assert doc["passes"] == 0 and doc["run_manifest_key"] is None
    assert doc["systemic_error"].endswith(f"the run manifest was not stored ({reason})")
    assert "run_manifest_not_stored" in proc.stderr
    assert_untouched(cfg.parent / "catalog.db", ids)


def test_backfill_with_storage_unreachable(cli_config, sandbox_http, tmp_path, pii_watch):
    """`backfill --json` with the store refusing connections: exit 3, its JSON summary,
    the run recorded, the backfill's own metrics file."""
    cfg, env = cli_config
    ids = _passes(sandbox_http, cfg, env, 2)
    env, prom = _with_metrics(env, tmp_path)
    env["IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    listed = tmp_path / "ids.txt"
    listed.write_text("\n".join(ids) + "\n")
    proc = run_cli(
        ["backfill", "--ids-file", str(listed), "--json", "--config", str(cfg)],
        env=env,
        watch=pii_watch,
    )
    backfill_prom = prom.with_name("idpass-archiver-backfill.prom")
    assert_systemic(proc, cfg.parent / "catalog.db", backfill_prom, "store_unavailable", "backfill")
    assert not prom.exists()  # the scheduled runs' series are not overwritten
    assert_untouched(cfg.parent / "catalog.db", ids)


# --- the API refusing the token ----------------------------------------------------------


def test_token_refused(cli_config, sandbox_http, tmp_path, pii_watch):
    """The sandbox refuses the token on the first details read: exit 3, the run
    recorded with its signed run manifest, metrics, run_finished, JSON; the passes are
    given back with no attempt spent."""
    cfg, env = cli_config
    ids = _passes(sandbox_http, cfg, env, 4)
    env, prom = _with_metrics(env, tmp_path)
    env["IDPASS_ARCHIVER_API_TOKEN"] = "not-the-token"
    proc = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    doc = assert_systemic(proc, cfg.parent / "catalog.db", prom, "api_auth_error")
    assert doc["passes"] == 0 and doc["run_manifest_key"] is not None
    assert_untouched(cfg.parent / "catalog.db", ids)


# --- mid-run: S3 killed while passes are in flight -----------------------------------------


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Any:
    """A SeaweedFS of this test's own (the test kills it), with an object-lock bucket."""
    with SeaweedFS(tmp_path / "own-s3") as server:
        bucket = f"test-{uuid.uuid4().hex[:20]}"
        server.create_bucket(bucket, object_lock=True, kms_key_id="archive-key")
        yield server, bucket


def _lost_commit_objects(client: Any, bucket: str, pass_ids: list[str]) -> set[str]:
    """The passes (of ``pass_ids``) whose stored manifest or signature a SIGKILLed
    ``weed mini`` kept as metadata without data: its GET keeps failing after restart.
    Real S3 never does this; the test then expects the pass given back, not archived.
    Each read is tried for a few seconds, so a server still settling is not "lost"."""
    keys = [
        o["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
        if o["Key"].endswith(("/manifest.json", "/manifest.json.sig"))
    ]
    lost: set[str] = set()
    for key in keys:
        owner = next((p for p in pass_ids if f"/{p}/" in key), None)
        if owner is None or owner in lost:
            continue
        for _ in range(10):
            try:
                client.get_object(Bucket=bucket, Key=key)["Body"].read()
                break
            except ClientError:
                time.sleep(0.5)
        else:
            lost.add(owner)
    return lost


def test_storage_killed_mid_run(cli_config, sandbox_http, own_seaweedfs, tmp_path, pii_watch):
    """SeaweedFS is SIGKILLed once the run has archived a pass, while others are in
    flight: the run stops as a systemic failure (exit 3, recorded in the catalog,
    metrics, JSON) instead of failing pass after pass; the passes left are given back
    without spending an attempt. The next run, against the stopped server, stops at
    its start the same way; once S3 is back, a run archives the rest."""
    cfg, env = cli_config
    db = cfg.parent / "catalog.db"
    server, bucket = own_seaweedfs
    ids = _passes(sandbox_http, cfg, env, 12)
    env, prom = _with_metrics(env, tmp_path)
    access, secret = server.credentials
    env.update(
        {
            "IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL": server.endpoint_url,
            "IDPASS_ARCHIVER_STORAGE__BUCKET": bucket,
            "IDPASS_ARCHIVER_PIPELINE__CONCURRENCY": "3",
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
        }
    )
    r = sandbox_http.post(
        "/_sandbox/fault-rates",
        json={"paths": [DETAILS], "rates": {"latency": 1.0}, "latency_seconds": 0.5, "seed": 1},
    )
    assert r.status_code == 200, r.text
    run = subprocess.Popen(
        [sys.executable, "-m", "archiver", "run", "--json", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )
    deadline = time.monotonic() + 60
    archived: list[tuple[str]] = []
    while not archived and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        archived = _query(db, "SELECT pass_id FROM passes WHERE state = 'archived'")
    assert run.poll() is None, "the run ended before S3 could be killed"
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    pii_watch.output("killed run stdout", out)
    pii_watch.output("killed run stderr", err)
    proc = subprocess.CompletedProcess(run.args, run.returncode, out, err)
    doc = assert_systemic(proc, db, prom, "store_unavailable")
    assert "the store is unreachable" in doc["systemic_error"]
    assert doc["stopped_early"] is True and doc["counts"]["retry"] == 0
    done = {pid for (pid,) in _query(db, "SELECT pass_id FROM passes WHERE state = 'archived'")}
    assert done and len(done) < len(ids)
    assert doc["counts"]["archived"] == len(done)
    assert_untouched(db, [p for p in ids if p not in done])

    # SeaweedFS stays down: the next run stops at its start
    again = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    assert_systemic(again, db, prom, "store_unavailable")
    assert_untouched(db, [p for p in ids if p not in done])

    # S3 back (its data kept, on new ports): the rest is archived
    sandbox_http.delete("/_sandbox/fault-rates")
    server.start()
    env["IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL"] = server.endpoint_url
    client = server.client()
    lost = _lost_commit_objects(client, bucket, [p for p in ids if p not in done])
    final = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    # A pass whose manifest or signature the killed server kept without its data cannot
    # be read back. The store answers the guard's probe, so this is one object's failure,
    # not the store's: the pass is retried by a later run (store_unavailable), never
    # archived on a manifest nobody could read.
    assert final.returncode == (1 if lost else 0), final.stderr[-3000:]
    assert json.loads(final.stdout)["counts"]["archived"] == len(ids) - len(done) - len(lost)
    rows = _query(db, "SELECT pass_id, state, last_reason FROM passes")
    left = {pid: (state, reason) for pid, state, reason in rows if state != "archived"}
    assert set(left) == lost, left
    assert all(s == "retry" and r.startswith("store_unavailable: ") for s, r in left.values()), left
    got = _samples(prom.read_text())
    assert got[("idpass_archiver_last_run_exit_code", (("mode", "run"),))] == (1 if lost else 0)
    # what the cut-off run committed is in the audit trail: the last run lists it. (The
    # pass manifests are compared by the catalog's record of them, not read back: a
    # SIGKILLed `weed mini` can keep an object's metadata but lose its data, which the
    # archiver's S3 never does, and reading it then fails.)
    runs = signed_run_manifests(client, bucket, "cli", TEST_SIGNER.verifier)
    listed = {(p.manifest_key, p.manifest_sha256) for r in runs for p in r.passes}
    committed = _query(
        db, "SELECT manifest_key, manifest_sha256 FROM passes WHERE state = 'archived'"
    )
    assert len(committed) == len(ids) - len(lost) and set(committed) <= listed
    assert {p.pass_id for r in runs for p in r.passes if p.recovered} == done


# --- schedule: each tick is a run -------------------------------------------------------


def test_schedule_records_a_systemic_tick(cli_config, sandbox_http, tmp_path, pii_watch):
    """`schedule` with the store refusing connections: each tick is a run that stops
    at its start as a systemic failure, recorded in the catalog, with metrics and
    run_finished, and the scheduler carries on to the next tick; SIGTERM ends it (0)."""
    cfg, env = cli_config
    db = cfg.parent / "catalog.db"
    ids = _passes(sandbox_http, cfg, env, 2)
    env, prom = _with_metrics(env, tmp_path)
    env["IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    env["IDPASS_ARCHIVER_SCHEDULE__CRON"] = "*/2 * * * * *"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "schedule", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )
    deadline = time.monotonic() + 90
    runs: list[tuple[Any, ...]] = []
    while not runs and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
        runs = _query(db, "SELECT run_id, exit_code, summary_json FROM runs")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    pii_watch.output("schedule stdout", out)
    pii_watch.output("schedule stderr", err)
    assert "Traceback" not in out + err, (out + err)[-3000:]
    assert proc.returncode == 0, err[-3000:]
    assert runs, out[-3000:]
    run_id, code, summary = runs[0]
    assert code == 3
    assert json.loads(summary)["systemic_error"].startswith("store_unavailable: ")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    finished = [e for e in events if e["event"] == "run_finished"]
    assert finished and finished[0]["run_id"] == run_id and finished[0]["exit_code"] == 3
    assert not [e for e in events if e["event"] == "scheduled_run_failed"]
    got = _samples(prom.read_text())
    assert got[("idpass_archiver_last_run_exit_code", (("mode", "run"),))] == 3
    assert_untouched(db, ids)


# --- the catalog unusable -----------------------------------------------------------------


def test_catalog_unusable_still_reports_the_run(cli_config, tmp_path, pii_watch):
    """The catalog cannot be opened (a file where its directory should be): exit 3,
    the JSON summary with `catalog_error`, `run_not_recorded` and `run_finished` in
    the log, and the metrics say so."""
    cfg, env = cli_config
    env, prom = _with_metrics(env, tmp_path)
    (tmp_path / "not-a-dir").write_text("")
    env["IDPASS_ARCHIVER_CATALOG__URL"] = f"sqlite:///{tmp_path / 'not-a-dir' / 'catalog.db'}"
    proc = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 3, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["systemic_error"].startswith("catalog_error: cannot take the run lock")
    events = {json.loads(line)["event"] for line in proc.stderr.splitlines() if line[:1] == "{"}
    assert {"run_aborted", "run_not_recorded", "run_finished"} <= events
    got = _samples(prom.read_text())
    assert got[("idpass_archiver_last_run_exit_code", (("mode", "run"),))] == 3
