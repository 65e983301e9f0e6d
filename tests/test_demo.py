"""`idpass-archiver demo` as a new user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _weed_processes_under(workdir: Path) -> list[int]:
    """Pids of SeaweedFS processes serving data from ``workdir`` (read from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "weed" in cmdline and str(workdir) in cmdline:
            pids.append(int(entry.name))
    return pids


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("IDPASS_ARCHIVER_")}


def test_demo_archives_reads_back_and_stops_servers(tmp_path, pii_watch):
    """The demo archives every archivable pass, reads all back intact, and stops S3."""
    workdir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "archiver", "demo", "--workdir", str(workdir), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    pii_watch.output("demo stdout", proc.stdout)
    pii_watch.output("demo stderr", proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["passes"] == 36
    assert result["outcomes"] == {
        "archived": 24,
        "no_images": 4,
        "expired": 3,
        "not_ready": 2,
        "skipped": 3,
    }
    assert result["read_back"]["problems"] == []
    assert result["unexpected_outcomes"] == []
    assert result["images"] > 100 and result["image_bytes"] > 5_000_000
    assert result["run_exit_code"] == 4  # the expired passes raise the compliance alarm
    assert _weed_processes_under(workdir) == []
    # The written config is the effective one: `status` finds the demo's catalog.
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "archiver",
            "status",
            "--json",
            "--config",
            str(workdir / "archiver.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd="/",
    )
    assert json.loads(status.stdout)["counts"]["archived"] == 24, status.stderr[-2000:]
    # The demo's secrets stay in private files in the work dir, nowhere in its output.
    for name in ("api-token", "catalog.key", "ledger.jsonl"):
        assert (workdir / name).stat().st_mode & 0o077 == 0
        pii_watch.secret(*(workdir / name).read_text().split())
    ledger = [json.loads(line) for line in (workdir / "ledger.jsonl").read_text().splitlines()]
    pii_watch.secret(*(p["cipher_key"] for p in ledger))


def test_demo_refuses_a_used_workdir(tmp_path):
    """Running the demo twice on one work dir is refused with a clear message."""
    workdir = tmp_path / "demo"
    workdir.mkdir()
    (workdir / "catalog.db").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "archiver", "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 2 and "choose an empty --workdir" in proc.stderr


def test_ctrl_c_stops_both_servers(tmp_path):
    """SIGINT during the demo stops SeaweedFS and the sandbox and exits 130."""
    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "demo", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not _weed_processes_under(workdir):
        time.sleep(0.1)
    assert _weed_processes_under(workdir), "SeaweedFS never started"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert _weed_processes_under(workdir) == []


def test_serve_keeps_s3_up_for_browsing_until_ctrl_c(tmp_path):
    """With --serve the bucket can be listed with the printed credentials; Ctrl+C ends it."""
    import boto3

    workdir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "archiver", "demo", "--workdir", str(workdir), "--serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("S3 stays up at"):
            break
    assert any(line.startswith("demo result: OK") for line in lines), "".join(lines)
    env = dict(
        line.split("=", 1) for line in (workdir / "s3.env").read_text().split() if "=" in line
    )
    client = boto3.client(
        "s3",
        endpoint_url=env["S3_ENDPOINT"],
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    listing = client.list_objects_v2(Bucket="idpass-archive-demo", Prefix="demo/passes/")
    assert listing["KeyCount"] > 100
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert _weed_processes_under(workdir) == []
