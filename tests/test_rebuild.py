"""`catalog rebuild` reconstructs the catalog from the S3 manifests alone."""

from __future__ import annotations

import json

from tests.fixtures.cli import run_cli


def test_rebuild_from_manifests_after_losing_the_catalog(cli_config, sandbox_http, pii_watch):
    """With the catalog deleted, rebuild restores every archived pass; a rerun writes nothing."""
    cfg, env = cli_config
    sandbox_http.post(
        "/_sandbox/passes", json={"count": 3, "image_retention_days": 9, "slots": ["probe"]}
    )
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    first = run_cli(["run", "--config", str(cfg), "--json"], env=env)
    archived = {p["pass_id"] for p in json.loads(first.stdout)["failed"]} or None
    assert archived is None and json.loads(first.stdout)["counts"]["archived"] == 3
    for name in ("catalog.db", "catalog.db-wal", "catalog.db-shm"):
        (cfg.parent / name).unlink(missing_ok=True)
    proc = run_cli(["catalog", "rebuild", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == {"manifests": 3, "recorded": 3, "rejected": []}
    status = json.loads(run_cli(["status", "--config", str(cfg), "--json"], env=env).stdout)
    assert status["counts"] == {"archived": 3}
    # Importing the ledger again finds the passes known; the run has nothing to do.
    run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    again = json.loads(run_cli(["run", "--config", str(cfg), "--json"], env=env).stdout)
    assert again["passes"] == 0
