"""A hostile API answers with personal data and terminal escape sequences wherever it
can put text (error codes, error bodies, content types, Date headers, slot names,
statuses); ``idpass-archiver run`` archives against it into the real SeaweedFS, and
none of that text reaches the logs, the catalog, the run manifests, the pass
manifests or the ``status``/``report`` output.

The API is a small HTTP server on loopback answering each pass id with its own
case; everything else (CLI, pipeline, catalog, store) is the real thing.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from archiver.catalog.keys import new_catalog_secret
from tests.fixtures.cli import TEST_SIGNING_KEY, run_cli, scan_bucket
from tests.fixtures.pii import PiiWatch
from tests.helpers import make_jpeg

PERSON = "Quillon Marrowby 1987-02-11"
RED, TITLE = "\x1b[31m", "\x1b]0;x\x07"
HOSTILE = f"{RED}{PERSON}{TITLE}"
WATCHED = (PERSON, "Quillon", "Marrowby", "1987-02-11", TITLE, HOSTILE)
JPEG = base64.b64encode(make_jpeg()).decode()
TOKEN = "hostile-test-token-" + "q" * 12


def _pass(pid: str, **over: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    doc = {
        "id": pid,
        "status": "complete",
        "verification_status": "passed",
        "config": {"image_retention_days": 30, "link_validity_days": 7},
        "created_at": (now - timedelta(hours=2)).isoformat(),
        "completed_at": (now - timedelta(hours=1)).isoformat(),
        "verified_identity": {"full_name": PERSON},  # belongs in the (encrypted) record
        "images": {"probe": JPEG},
    }
    doc.update(over)
    return doc


Answer = tuple[int, str, bytes]  # status, content type, body
Case = tuple[Callable[[str], Answer], str, str | None]  # answer, outcome, reason fragment


def _json(status: int, doc: Any) -> Answer:
    return status, "application/json", json.dumps(doc).encode()


def _ok(**over: Any) -> Callable[[str], Answer]:
    return lambda pid: _json(200, _pass(pid, **over))


ERROR_BODY = {"error": {"code": HOSTILE, "message": f"no pass for {HOSTILE}"}}
CASES: dict[str, Case] = {
    "plain": (_ok(), "archived", None),
    "data_uri": (_ok(images={"probe": f"data:image/jpeg;base64,{JPEG}"}), "archived", None),
    "image_list": (_ok(images=[{"slot": "probe", "data": JPEG}]), "archived", None),
    "verification_status": (_ok(verification_status=HOSTILE), "archived", None),
    "code_404": (lambda pid: _json(404, ERROR_BODY), "failed", "HTTP 404 (unrecognised)"),
    "code_500_long": (
        lambda pid: _json(500, {"error": {"code": PERSON + "x" * 1968}}),
        "retry",
        "HTTP 500 (unrecognised)",
    ),
    "html_400": (
        lambda pid: (400, f"text/html; {HOSTILE}", f"<h1>{HOSTILE}</h1>".encode()),
        "failed",
        "HTTP 400 (non_json_body)",
    ),
    "content_type": (
        lambda pid: (200, f"text/plain; {HOSTILE}", json.dumps(_pass(pid)).encode()),
        "retry",
        "got another content type",
    ),
    "envelope_200": (
        lambda pid: _json(200, ERROR_BODY),
        "retry",
        "HTTP 200 with an error envelope (unrecognised)",
    ),
    "slot_person": (_ok(images={"probe": JPEG, PERSON: JPEG}), "failed", "safe key segment"),
    "slot_newline": (_ok(images={"probe\n": JPEG}), "failed", "safe key segment"),
    "slot_escape_null": (_ok(images={"probe": JPEG, TITLE: None}), "failed", "safe key segment"),
    "status": (_ok(status=HOSTILE), "retry", "status: value_error"),
    "completed_at": (_ok(completed_at=HOSTILE), "retry", "completed_at: "),
    "too_many_slots": (
        _ok(images={f"s{n}_{PERSON[:3].lower()}": JPEG for n in range(500)}),
        "failed",
        "too_many_slots: ",
    ),
    "record_too_large": (_ok(notes=(PERSON + " ") * 50_000), "failed", "record_too_large: "),
}


class _Api(BaseHTTPRequestHandler):
    """POST /idpass/details: the case of the pass id, every answer with a Date header
    that is hostile text (except the plain pass's: an hour ahead of ours)."""

    cases: dict[str, str] = {}

    def do_POST(self) -> None:
        pid = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["id"]
        name = self.cases[pid]
        status, ctype, body = CASES[name][0](pid)
        ahead = format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
        self.send_response_only(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Date", ahead if name == "plain" else HOSTILE)
        self.send_header("X-Request-Note", HOSTILE)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_api() -> Iterator[tuple[str, dict[str, str]]]:
    """The server's base URL and the map pass id -> case name it answers from."""
    ids = {str(uuid.uuid4()): name for name in CASES}
    handler = type("Api", (_Api,), {"cases": ids})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", ids
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _catalog_text(db: Path) -> Iterator[tuple[str, str]]:
    """Every text cell of every table of the SQLite catalog, as (table, text)."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                yield from ((table, v) for v in row if isinstance(v, str))


def test_hostile_api_text_reaches_no_output(hostile_api, tmp_path, seaweedfs, s3_bucket, pii_watch):
    """Every case gets its outcome and a reason from the fixed vocabulary; no name,
    date of birth or escape sequence the API sent is found in any output."""
    base_url, ids = hostile_api
    db = tmp_path / "catalog.db"
    cfg = tmp_path / "archiver.toml"
    cfg.write_text(
        f"""
[api]
base_url = "{base_url}"
max_attempts = 1
[storage]
bucket = "{s3_bucket}"
prefix = "hostile"
endpoint_url = "{seaweedfs.endpoint_url}"
region = "us-east-1"
kms_key_id = "archive-key"
[catalog]
url = "sqlite:///{db}"
"""
    )
    access, secret = seaweedfs.credentials
    env = {
        "IDPASS_ARCHIVER_API_TOKEN": TOKEN,
        "IDPASS_ARCHIVER_CATALOG_KEY": new_catalog_secret(),
        "IDPASS_ARCHIVER_SIGNING_KEY": TEST_SIGNING_KEY,
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
    }
    watch = PiiWatch()  # this test's own, scanned here; the session's gets it all too
    watch.secret(*WATCHED)
    pii_watch.secret(PERSON, HOSTILE, "1987-02-11")  # not the bare names other tests use

    def cli(*args: str) -> Any:
        proc = run_cli([*args, "--config", str(cfg)], env=env, watch=pii_watch)
        for stream, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            watch.output(f"{args[0]} {stream}", text)
            assert "Traceback" not in text, f"{args}: {text[-2000:]}"
        return proc

    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text("".join(json.dumps({"id": pid}) + "\n" for pid in ids))
    assert cli("catalog", "import", str(ledger)).returncode == 0

    run = cli("run", "--json")
    assert run.returncode == 1, run.stderr[-2000:]  # failures and retries: incomplete
    failed = {r["pass_id"]: r["reason"] for r in json.loads(run.stdout)["failed"]}
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    skew = [e for e in events if e["event"] == "api_clock_skew"]
    assert [e["level"] for e in skew] == ["info", "warning"]
    assert 3500 < skew[-1]["skew_seconds"] < 3700  # the plain pass's Date: an hour ahead

    with sqlite3.connect(db) as conn:
        rows = dict(
            conn.execute("SELECT pass_id, state || '|' || COALESCE(last_reason, '') FROM passes")
        )
    for pid, name in ids.items():
        _, outcome, fragment = CASES[name]
        state, reason = rows[pid].split("|", 1)
        assert state == outcome, f"{name}: {state} ({reason})"
        if fragment is not None:
            assert fragment in reason, f"{name}: {reason}"
        assert failed.get(pid) == (reason if outcome in ("failed", "retry") else None), name

    for args in (["status"], ["status", "--json"], ["report"], ["report", "--format", "json"]):
        assert cli(*args).returncode in (0, 1), args
    html = tmp_path / "report.html"
    assert cli("report", "--format", "html", "--output", str(html)).returncode in (0, 1)
    watch.output("report.html", html.read_text())
    for table, text in _catalog_text(db):
        watch.output(f"catalog {table}", text)
        pii_watch.output(f"hostile catalog {table}", text)

    bucket = PiiWatch()
    scan_bucket(seaweedfs.client(), s3_bucket, bucket)  # keys, manifests, run manifests
    keys = [text for where, text in bucket.outputs if where.endswith(" key")]
    [run_key] = [k for k in keys if "/runs/" in k and k.endswith(".json")]
    [run_manifest] = [t for w, t in bucket.outputs if w.endswith(run_key.rsplit("/", 1)[-1])]
    assert "unrecognised" in run_manifest and "too_many_slots" in run_manifest  # its reasons
    manifests = [text for where, text in bucket.outputs if where.endswith("manifest.json")]
    verification = ids_by_name(ids)["verification_status"]
    [mine] = [json.loads(t) for t in manifests if verification in t and '"pass"' in t]
    assert mine["pass"]["verification_status"] == "unrecognised"
    for where, text in bucket.outputs:
        watch.output(where, text)
        pii_watch.output(f"hostile {where}", text)

    assert len(watch.outputs) > 20
    assert watch.scan() == []
    for where, text in watch.outputs:
        assert "\x1b" not in text and "\x07" not in text, where


def ids_by_name(ids: dict[str, str]) -> dict[str, str]:
    return {name: pid for pid, name in ids.items()}
