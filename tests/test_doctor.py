"""`idpass-archiver doctor` against the real sandbox and SeaweedFS."""

from __future__ import annotations

import json
import re
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.fixtures.cli import run_cli


def _doctor(cfg, env):
    proc = run_cli(["doctor", "--config", str(cfg), "--json"], env=env)
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    return proc.returncode, {c["check"]: c for c in doc["checks"]}


def test_doctor_passes_on_a_well_configured_bucket(cli_config, seaweedfs, s3_bucket):
    """With default encryption and Object Lock as configured, every check passes."""
    cfg, env = cli_config
    cfg.write_text(cfg.read_text() + '\n[object_lock]\nmode = "GOVERNANCE"\nretain_days = 1\n')
    seaweedfs.client().put_bucket_encryption(
        Bucket=s3_bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    code, checks = _doctor(cfg, env)
    assert code == 0, checks
    assert all(c["ok"] for c in checks.values())
    assert {
        "api",
        "signing key",
        "bucket",
        "default encryption",
        "versioning and object lock",
        "clock",
        "round trip",
    } <= set(checks)
    # the sandbox's Date header (uvicorn's) is read: the API's clock is ours
    assert "from the API's clock" in checks["api clock"]["detail"]
    assert not checks["api clock"]["warn"]
    for section in ("api", "storage"):  # the test servers are plain http on loopback
        detail = checks[f"{section} TLS"]["detail"]
        assert detail.startswith("http:// to loopback"), detail
        assert "certificates verified" not in detail
    listing = seaweedfs.client().list_objects_v2(Bucket=s3_bucket, Prefix="cli/.doctor/")
    assert listing.get("KeyCount", 0) == 0  # the scratch object is gone


def test_doctor_names_each_failure(cli_config, seaweedfs):
    """A refused token, no default encryption and a lock the bucket lacks each fail."""
    cfg, env = cli_config
    plain = "doctor-plain-bucket"
    seaweedfs.create_bucket(plain, kms_key_id="archive-key")
    text = cfg.read_text().replace('bucket = "', f'bucket = "{plain}"\n# was: "', 1)
    cfg.write_text(text + '\n[object_lock]\nmode = "COMPLIANCE"\n')
    code, checks = _doctor(cfg, {**env, "IDPASS_ARCHIVER_API_TOKEN": "wrong-token"})
    assert code == 1
    assert not checks["api"]["ok"] and "refused" in checks["api"]["detail"]
    assert not checks["default encryption"]["ok"]
    assert not checks["versioning and object lock"]["ok"]
    assert checks["round trip"]["ok"] and checks["clock"]["ok"]


class _Api404(BaseHTTPRequestHandler):
    """An API stand-in on loopback: every details request is an unknown pass (404),
    answered with a ``Date`` header ``offset`` seconds from the real time (None: no
    Date header at all)."""

    offset: float | None = 0.0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"code": "pass_not_found"}}'
        self.send_response_only(404)
        if self.offset is not None:
            self.send_header("Date", formatdate(time.time() + self.offset, usegmt=True))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("offset", "label"),
    [
        (0.0, "ok"),
        (-300.0, "WARN"),  # the API is behind: our clock is ahead of it
        (7200.0, "FAIL"),
        (None, "WARN"),  # no Date header: the skew is unknown
    ],
)
def test_doctor_checks_the_api_clock_from_its_date_header(
    cli_config, seaweedfs, s3_bucket, offset, label
):
    seaweedfs.client().put_bucket_encryption(  # so that only the API's clock may fail
        Bucket=s3_bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    handler = type("Api", (_Api404,), {"offset": offset})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        cfg, env = cli_config
        url = f"http://127.0.0.1:{server.server_address[1]}"
        text = cfg.read_text()
        start = text.index("base_url = ")
        cfg.write_text(text[:start] + f'base_url = "{url}"' + text[text.index("\n", start) :])
        proc = run_cli(["doctor", "--config", str(cfg)], env=env)
    finally:
        server.shutdown()
        server.server_close()
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    [line] = [x for x in proc.stdout.splitlines() if "] api clock: " in x]
    assert line.startswith(f"[{label}] api clock: "), line
    if offset is None:
        assert "the API sent no Date header: skew unknown" in line
    else:  # ours minus the API's, within the Date header's 1 s resolution
        skew = float(re.search(r"api clock: ([-+]\d+) s from the API's clock", line)[1])
        assert abs(skew + offset) <= 2, line
    assert "[ok] api: " in proc.stdout  # the 404 proved the API answers
    assert proc.returncode == (1 if label == "FAIL" else 0), proc.stdout
