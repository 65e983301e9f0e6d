"""The command line as a user runs it: subprocesses, real sandbox, real SeaweedFS."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import archiver.__main__ as entry
from archiver import cli
from tests.fixtures.cli import cli_env
from tests.fixtures.cli import run_cli as _cli

PID = "0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11"


def test_version_and_help():
    """--version prints the version (pyproject's, and the installed one); --help shows
    examples and exit codes."""
    import tomllib
    from importlib.metadata import version

    from archiver import __version__

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared == version("idpass-archiver")
    assert _cli(["--version"]).stdout.strip() == f"idpass-archiver {declared}"
    out = _cli(["--help"]).stdout
    assert "examples:" in out and "exit codes" in out


def test_bad_config_exits_2_naming_the_key(tmp_path):
    """A config error is one line naming the key, exit code 2, no traceback."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[api]\nbase_url = "ftp://x"\n[storage]\nbucket = "bucket-1"\nsse = "AES256"\n')
    proc = _cli(["run", "--config", str(cfg)])
    assert proc.returncode == 2
    assert "api.base_url" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_config_exits_2():
    """No --config and no env var is a usage error with a hint."""
    proc = _cli(["status"])
    assert proc.returncode == 2 and "--config" in proc.stderr


def _plain_config(tmp_path: Path, catalog_url: str) -> Path:
    cfg = tmp_path / "archiver.toml"
    cfg.write_text(
        '[api]\nbase_url = "https://api.example.test"\n'
        '[storage]\nbucket = "bucket-1"\nkms_key_id = "alias/archive"\n'
        f'[catalog]\nurl = "{catalog_url}"\n'
    )
    return cfg


def test_the_command_context_opens_the_catalog_on_first_use_and_once(tmp_path):
    """A command's context loads the settings at once, and opens the catalog only when
    the command asks for it (a command that never does leaves no database behind),
    once, and closes it at the end."""
    import structlog

    db = tmp_path / "catalog" / "catalog.db"
    cfg = _plain_config(tmp_path, f"sqlite:///{db}")
    args = cli.build_parser().parse_args(["status", "--config", str(cfg), "--json"])

    def held_open() -> int:  # this process's file descriptors on the database
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(db.resolve()))

    saved = structlog.get_config()
    try:
        with cli.CommandContext(args) as ctx:
            assert ctx.settings.storage.bucket == "bucket-1"
            assert not db.exists()
            catalog = ctx.catalog
            assert db.exists() and ctx.catalog is catalog
            assert dict(catalog.counts()) == {}
            assert held_open() >= 1  # the pooled connection
        assert held_open() == 0
    finally:
        structlog.configure(**saved)


def test_an_unreachable_catalog_exits_3_without_its_password(tmp_path):
    """The context turns nothing into a traceback: a catalog that cannot be opened is
    exit 3 with the catalog error, and the URL's password is not repeated."""
    url = "postgresql+psycopg://u:s3cret-pw@127.0.0.1:9/x?connect_timeout=2"
    proc = _cli(["status", "--config", str(_plain_config(tmp_path, url))])
    assert proc.returncode == 3, proc.stderr
    assert "catalog_error" in proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_import_run_status_end_to_end(cli_config, sandbox_http, pii_watch):
    """catalog import → run → status works from the shell with documented exit codes."""
    cfg, env = cli_config
    r = sandbox_http.post("/_sandbox/passes", json={"count": 3, "image_retention_days": 9})
    ids = [p["id"] for p in r.json()["passes"]]
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)

    imp = _cli(
        ["catalog", "import", str(ledger), "--config", str(cfg), "--json"], env=env, watch=pii_watch
    )
    assert imp.returncode == 0, imp.stderr
    assert json.loads(imp.stdout)["added"] == 3

    dry = _cli(["run", "--config", str(cfg), "--dry-run"], env=env, watch=pii_watch)
    assert dry.returncode == 0 and "3 passes due; nothing written" in dry.stdout

    run = _cli(["run", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["counts"]["archived"] == 3 and doc["exit_code"] == 0
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    finished = [e for e in events if e["event"] == "run_finished"]
    assert len(finished) == 1 and finished[0]["counts"]["archived"] == 3
    assert {e["pass_id"] for e in events if e["event"] == "pass_done"} == set(ids)
    # image counts are logged as numbers (a field named `images` would be redacted)
    done = [e for e in events if e["event"] == "pass_done"]
    assert all(isinstance(e["image_count"], int) and e["image_count"] > 0 for e in done)
    assert finished[0]["image_count"] == doc["images"] == sum(e["image_count"] for e in done)

    status = _cli(["status", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert json.loads(status.stdout)["counts"] == {"archived": 3}


def test_enqueue_from_args_and_stdin(cli_config, pii_watch):
    """enqueue takes ids as arguments and from stdin, and rejects non-UUIDs by position."""
    cfg, env = cli_config
    other = "1c7f3c9e-6a55-4a43-9d8f-2f0a8f7e3c22"
    proc = _cli(
        ["enqueue", PID, "not-a-uuid", "-", "--config", str(cfg)],
        env=env,
        stdin=f"{other}\n\n{PID}\n",
        watch=pii_watch,
    )
    assert proc.returncode == 1
    assert "2 new, 1 already known, 1 rejected" in proc.stdout
    assert "item 2: id is not a UUID" in proc.stderr


def test_expired_pass_gives_exit_4(cli_config, sandbox_http, pii_watch):
    """A pass whose window closed before archival makes run exit 4."""
    cfg, env = cli_config
    sandbox_http.post(
        "/_sandbox/passes",
        json={"image_retention_days": 1, "completed_at": "2020-01-01T00:00:00Z"},
    )
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    assert _cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env).returncode == 0
    run = _cli(["run", "--config", str(cfg)], env=env, watch=pii_watch)
    assert run.returncode == 4


def test_bad_token_gives_exit_3(cli_config, sandbox_http, pii_watch):
    """A refused token stops the run with exit code 3."""
    cfg, env = cli_config
    sandbox_http.post("/_sandbox/passes", json={"image_retention_days": 3})
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    _cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    env = {**env, "IDPASS_ARCHIVER_API_TOKEN": "not-the-token"}
    run = _cli(["run", "--config", str(cfg)], env=env, watch=pii_watch)
    assert run.returncode == 3
    assert "api_auth_error" in run.stdout


def test_import_reports_bad_lines(cli_config, tmp_path):
    """catalog import imports good lines, reports bad ones by number, exits 1."""
    cfg, env = cli_config
    f = tmp_path / "x.csv"
    f.write_text(f"id,image_retention_days\n{PID},5\nnope,5\n")
    proc = _cli(["catalog", "import", str(f), "--config", str(cfg)], env=env)
    assert proc.returncode == 1
    assert "1 new" in proc.stdout and "line 3: id is not a UUID" in proc.stderr


def test_import_missing_file_is_a_usage_error(cli_config):
    """A missing import file is exit 2 with the path named."""
    cfg, env = cli_config
    proc = _cli(["catalog", "import", "/nonexistent.jsonl", "--config", str(cfg)], env=env)
    assert proc.returncode == 2 and "/nonexistent.jsonl" in proc.stderr


def _count_runs(db: Path) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM runs")).scalar() or 0)
    except sa.exc.OperationalError:
        return 0
    finally:
        engine.dispose()


def _schedule(cfg: Path, env: dict[str, str], *, runs: int) -> tuple[int, int, str, str]:
    """Run `schedule` (every 2 s) until the catalog holds ``runs`` runs, then SIGTERM it;
    the runs recorded by then, its exit code, stdout and stderr."""
    import signal
    import time

    cfg.write_text(cfg.read_text() + '\n[schedule]\ncron = "*/2 * * * * *"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "schedule", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(env),
    )
    db = cfg.parent / "catalog.db"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _count_runs(db) < runs and proc.poll() is None:
        time.sleep(0.2)
    recorded = _count_runs(db)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    return recorded, proc.returncode, out, err


def _import_new_passes(cfg: Path, env: dict[str, str], sandbox_http, **passes) -> None:
    sandbox_http.post("/_sandbox/passes", json=passes)
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    assert _cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env).returncode == 0


def test_schedule_runs_on_each_tick_and_stops_cleanly_on_sigterm(cli_config, sandbox_http):
    """schedule runs a cycle per cron tick, and SIGTERM ends it with exit 0."""
    cfg, env = cli_config
    _import_new_passes(cfg, env, sandbox_http, count=2, image_retention_days=4)
    runs, code, out, err = _schedule(cfg, env, runs=2)
    assert runs >= 2, (out + err)[-3000:]
    assert code == 0, err[-3000:]
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert events.count("run_finished") >= 2
    assert events[-1] == "schedule_stopped"
    status = _cli(["status", "--config", str(cfg), "--json"], env=env)
    assert json.loads(status.stdout)["counts"] == {"archived": 2}


def _failing_source(cfg: Path, tmp_path: Path) -> Path:
    """Add [metrics] and a file source whose file does not exist (a failed sync)."""
    prom = tmp_path / "textfile" / "idpass-archiver.prom"
    prom.parent.mkdir()
    cfg.write_text(
        cfg.read_text()
        + f'[metrics]\ntextfile_path = "{prom}"\n'
        + f'[[sources]]\nkind = "file"\nname = "ledger"\npath = "{tmp_path / "gone.jsonl"}"\n'
    )
    return prom


def _recorded_exit_codes(cfg: Path, env: dict[str, str], prom: Path, seaweedfs, bucket: str):
    """The last run's exit code as the metrics textfile, the signed run manifest in
    the bucket and the catalog record each give it, and the last-success gauge."""
    from prometheus_client.parser import text_string_to_metric_families

    gauges = {
        s.name: s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    last = json.loads(_cli(["status", "--config", str(cfg), "--json"], env=env).stdout)["last_run"]
    client = seaweedfs.client()
    listed = client.list_objects_v2(Bucket=bucket, Prefix="cli/runs/").get("Contents", [])
    (key,) = [o["Key"] for o in listed if o["Key"].endswith(f"/{last['run_id']}.json")]
    manifest = json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    return {
        "metrics": gauges["idpass_archiver_last_run_exit_code"],
        "run_manifest": manifest["exit_code"],
        "catalog": last["exit_code"],
        "success": gauges["idpass_archiver_last_run_success"],
    }


def test_a_scheduled_run_whose_source_failed_records_the_exit_code_run_returns(
    cli_config, sandbox_http, seaweedfs, s3_bucket, tmp_path, pii_watch
):
    """Defect: `schedule` dropped the source-sync reports that `run` attaches, so a
    scheduled run whose source failed reported success, and its signed run manifest
    and catalog record said exit 0. Every record of a cycle now holds the exit code
    `run` returns for the same situation: 1 (the pass itself is archived)."""
    cfg, env = cli_config
    _import_new_passes(cfg, env, sandbox_http, image_retention_days=4)
    prom = _failing_source(cfg, tmp_path)
    runs, code, out, err = _schedule(cfg, env, runs=1)
    assert runs >= 1 and code == 0, (out + err)[-3000:]
    pii_watch.output("schedule stdout", out)
    expected = {"metrics": 1, "run_manifest": 1, "catalog": 1, "success": 0}
    assert _recorded_exit_codes(cfg, env, prom, seaweedfs, s3_bucket) == expected
    status = json.loads(_cli(["status", "--config", str(cfg), "--json"], env=env).stdout)
    assert status["counts"] == {"archived": 1}

    run = _cli(["run", "--config", str(cfg), "--json"], env=env, watch=pii_watch)
    assert run.returncode == 1, run.stderr[-2000:]
    assert json.loads(run.stdout)["exit_code"] == 1
    assert _recorded_exit_codes(cfg, env, prom, seaweedfs, s3_bucket) == expected


def test_run_refuses_while_another_holds_the_lock(cli_config, sandbox_http):
    """A run started while another holds the SQLite catalog lock exits 5 and does nothing."""
    import fcntl

    cfg, env = cli_config
    sandbox_http.post("/_sandbox/passes", json={"image_retention_days": 4})
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    _cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    lock = cfg.parent / "catalog.db.lock"
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        proc = _cli(["run", "--config", str(cfg)], env=env)
    assert proc.returncode == 5
    assert "another run holds the catalog lock" in proc.stderr
    status = _cli(["status", "--config", str(cfg), "--json"], env=env)
    assert json.loads(status.stdout)["counts"] == {"pending": 1}
    assert _cli(["run", "--config", str(cfg)], env=env).returncode == 0


def test_the_script_pauses_the_gc_for_start_up_only(monkeypatch):
    """The entry point starts with the cyclic GC off; a command finds it on again."""
    seen: list[bool] = []

    def command(args: object) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setitem(cli.COMMANDS, "status", command)
    monkeypatch.setattr(sys, "argv", ["idpass-archiver", "status"])
    try:
        assert entry.main() == 0
    finally:
        gc.unfreeze()
        gc.enable()
    assert seen == [True]


_RUN_SPY = """
import gc, sys
import archiver.app
from archiver.__main__ import main

real = archiver.app.run_cycle_sync
seen = []

def spy(*args, **kwargs):
    seen.append((gc.isenabled(), gc.get_freeze_count() > 0))
    return real(*args, **kwargs)

archiver.app.run_cycle_sync = spy
sys.argv = ["idpass-archiver", "run", "--config", sys.argv[1]]
code = main()
print("SPY", code, seen, file=sys.stderr)
"""


def test_run_turns_the_paused_gc_back_on_once_set_up(cli_config, sandbox_http):
    """`run` keeps the GC paused through its set-up and turns it on (with everything
    alive by then frozen) before the cycle starts."""
    cfg, env = cli_config
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_SPY, str(cfg)],
        capture_output=True,
        text=True,
        env=cli_env(env),
        timeout=120,
    )
    assert "SPY 0 [(True, True)]" in proc.stderr, proc.stderr[-2000:]
