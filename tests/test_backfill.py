"""`idpass-archiver backfill` and `sync` from the shell, against the test servers."""

from __future__ import annotations

import json
import sqlite3

from tests.fixtures.cli import run_cli


def _seed_days(http, days):
    """One pass completed at noon UTC on each given day (retention long enough)."""
    ids = {}
    for day in days:
        r = http.post(
            "/_sandbox/passes",
            json={
                "image_retention_days": 3000,
                "completed_at": f"{day}T12:00:00Z",
                "slots": ["probe"],
            },
        )
        ids[day] = r.json()["passes"][0]["id"]
    return ids


def _import(cfg, env, http):
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(http.get("/_sandbox/ledger").content)
    assert (
        run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env).returncode == 0
    )


def test_backfill_date_range_is_inclusive_and_resumable(cli_config, sandbox_http, pii_watch):
    """Only passes completed in [from, to] whole days are archived; a rerun does nothing."""
    cfg, env = cli_config
    ids = _seed_days(sandbox_http, ["2024-03-01", "2024-03-02", "2024-03-03", "2024-03-04"])
    _import(cfg, env, sandbox_http)
    args = [
        "backfill",
        "--config",
        str(cfg),
        "--completed-from",
        "2024-03-02",
        "--completed-to",
        "2024-03-03",
        "--json",
    ]
    first = run_cli(args, env=env, watch=pii_watch)
    assert first.returncode == 0, first.stderr[-2000:]
    doc = json.loads(first.stdout)
    assert doc["counts"]["archived"] == 2
    status = json.loads(run_cli(["status", "--config", str(cfg), "--json"], env=env).stdout)
    assert status["counts"] == {"archived": 2, "pending": 2}
    events = [json.loads(x) for x in first.stderr.splitlines() if x.startswith("{")]
    progress = [e for e in events if e["event"] == "backfill_progress"]
    assert progress and progress[-1]["done"] == 2 and progress[-1]["total"] == 2
    assert [e["total"] for e in events if e["event"] == "backfill_started"] == [2]
    again = run_cli(args, env=env, watch=pii_watch)
    assert again.returncode == 0 and json.loads(again.stdout)["passes"] == 0
    db = sqlite3.connect(cfg.parent / "catalog.db")
    archived = {r[0] for r in db.execute("SELECT pass_id FROM passes WHERE state='archived'")}
    db.close()
    assert archived == {ids["2024-03-02"], ids["2024-03-03"]}


def test_backfill_ids_file_enqueues_unknown_ids(cli_config, sandbox_http, tmp_path):
    """Ids listed in a file are enqueued if new and archived; bad lines are reported."""
    cfg, env = cli_config
    ids = list(_seed_days(sandbox_http, ["2024-05-01", "2024-05-02"]).values())
    _import(cfg, env, sandbox_http)
    extra = sandbox_http.post(
        "/_sandbox/passes", json={"image_retention_days": 30, "slots": ["probe"]}
    ).json()["passes"][0]
    # `extra` is not in the catalog and its key is unknown: server-side decryption is
    # impossible, so it fails for that reason, not silently.
    listing = tmp_path / "ids.txt"
    listing.write_text(f"{ids[0]}\nnot-an-id\n{extra['id']}\n")
    proc = run_cli(
        ["backfill", "--config", str(cfg), "--ids-file", str(listing), "--json"], env=env
    )
    doc = json.loads(proc.stdout)
    outcomes = {f["pass_id"]: f["reason"] for f in doc["failed"]}
    assert doc["counts"]["archived"] == 1
    assert "arrived encrypted" in outcomes[extra["id"]]
    assert "line 2: id is not a UUID" in proc.stderr
    assert proc.returncode == 1


def test_backfill_needs_a_range_or_a_file(cli_config):
    """Without a range or --ids-file, backfill is a usage error."""
    cfg, env = cli_config
    proc = run_cli(["backfill", "--config", str(cfg), "--completed-from", "2024-01-01"], env=env)
    assert proc.returncode == 2 and "--completed-to" in proc.stderr
    proc = run_cli(
        [
            "backfill",
            "--config",
            str(cfg),
            "--completed-from",
            "01/02/2024",
            "--completed-to",
            "2024-01-03",
        ],
        env=env,
    )
    assert proc.returncode == 2 and "is not a date" in proc.stderr


def test_sync_and_run_read_a_sql_source(cli_config, sandbox_http, tmp_path, pii_watch):
    """A SQLite 'KYC database' is synced by `sync` and by `run`; keys stay in the source."""
    cfg, env = cli_config
    passes = sandbox_http.post(
        "/_sandbox/passes", json={"count": 3, "image_retention_days": 30, "slots": ["probe"]}
    ).json()["passes"]
    kyc = tmp_path / "kyc.db"
    db = sqlite3.connect(kyc)
    db.execute(
        "CREATE TABLE kyc (id TEXT, cipher_key TEXT, completed_at TEXT, "
        "retention INTEGER, updated_at TEXT)"
    )
    for p in passes[:2]:
        db.execute(
            "INSERT INTO kyc VALUES (?, ?, ?, ?, '2026-01-01 00:00:00')",
            (p["id"], p["cipher_key"], p["completed_at"], 30),
        )
    db.commit()
    cfg.write_text(
        cfg.read_text()
        + '''
[[sources]]
kind = "sql"
name = "kyc"
url_env = "KYC_URL"
query = """SELECT id, cipher_key, completed_at, retention AS image_retention_days, updated_at
           FROM kyc WHERE updated_at > :watermark"""
key_query = "SELECT cipher_key FROM kyc WHERE id = :id"
'''
    )
    env = {**env, "KYC_URL": f"sqlite:///{kyc}"}
    sync = run_cli(["sync", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert sync.returncode == 0, sync.stderr[-2000:]
    [report] = json.loads(sync.stdout)["sources"]
    assert report["added"] == 2
    db.execute(
        "INSERT INTO kyc VALUES (?, ?, ?, 30, '2026-02-01 00:00:00')",
        (passes[2]["id"], passes[2]["cipher_key"], passes[2]["completed_at"]),
    )
    db.commit()
    db.close()
    run = run_cli(["run", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    assert doc["counts"]["archived"] == 3
    assert doc["sources"][0]["added"] == 1
    catalog_bytes = (cfg.parent / "catalog.db").read_bytes()
    assert all(p["cipher_key"].encode() not in catalog_bytes for p in passes)
