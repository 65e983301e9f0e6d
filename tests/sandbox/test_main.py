"""``python -m archiver.sandbox`` as a demo or CI would run it: a foreground process."""

from __future__ import annotations

import signal
import subprocess
import sys

import httpx
import orjson
import pytest


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_prints_its_url_and_stops_cleanly_on_a_signal(sig: signal.Signals) -> None:
    """The process prints one JSON line with its URL, answers HTTP, and exits 0 on a signal."""
    cmd = [sys.executable, "-m", "archiver.sandbox", "--port", "0", "--token", "cli-token"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = orjson.loads(line)["url"]
            assert url.startswith("http://127.0.0.1:")
            headers = {"Authorization": "Bearer cli-token"}
            r = httpx.post(f"{url}/_sandbox/passes", headers=headers, json={}, timeout=10)
            assert r.status_code == 201
            proc.send_signal(sig)
            out, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert out == ""
    assert "Traceback" not in err


def test_a_token_is_required() -> None:
    """Without --token the process refuses to start."""
    result = subprocess.run(
        [sys.executable, "-m", "archiver.sandbox", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "--token" in result.stderr
