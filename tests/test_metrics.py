"""Prometheus metrics of each run, read back with prometheus_client's own parser."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from archiver import __version__, config
from archiver.catalog import Outcome
from archiver.errors import ConfigError
from archiver.metrics import LAST_SUCCESS, publish, textfile_for, write_textfile
from archiver.results import PassResult, RunSummary
from tests.fixtures.cli import run_cli

T0 = datetime(2026, 11, 25, 10, 0, 0, tzinfo=UTC)
PIDS = [f"0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c{n:02d}" for n in range(10)]


def _summary(
    *,
    started: datetime = T0,
    seconds: float = 42.5,
    systemic: str | None = None,
    stopped_early: bool = False,
    sources: list[dict[str, Any]] | None = None,
    dry_run: bool = False,
) -> RunSummary:
    """A run with every kind of outcome: 3 archived (7 images), 1 expired, 1 failed,
    1 retry, 1 no_images; 2 passes at risk."""
    results = [
        PassResult(PIDS[0], Outcome.ARCHIVED, images=3, image_bytes=1_000_000),
        PassResult(PIDS[1], Outcome.ARCHIVED, images=2, image_bytes=650_811),
        PassResult(PIDS[2], Outcome.ARCHIVED, images=2, image_bytes=332_132),
        PassResult(PIDS[3], Outcome.EXPIRED, reason="reason-of-expired"),
        PassResult(PIDS[4], Outcome.FAILED, reason="reason-of-failed"),
        PassResult(PIDS[5], Outcome.RETRY, reason="api 503"),
        PassResult(PIDS[6], Outcome.NO_IMAGES, reason="retention 0"),
    ]
    return RunSummary(
        run_id="20261125T100000Z-0000abcd",
        started_at=started,
        finished_at=started + timedelta(seconds=seconds),
        results=results,
        systemic_error=systemic,
        stopped_early=stopped_early,
        worker_id="host-123",
        at_risk=[(PIDS[7], started + timedelta(minutes=30)), (PIDS[8], started)],
        sources=sources or [],
        dry_run=dry_run,
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample in exposition text, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge", family.name
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _settings(tmp_path: Path, **metrics: Any) -> config.Settings:
    data: dict[str, Any] = {
        "api": {"base_url": "https://api.example.test"},
        "storage": {"bucket": "my-archive", "kms_key_id": "alias/archive"},
        "metrics": metrics,
    }
    return config.from_mapping(data, environ={})


def _expected(labels: dict[str, str], *, exit_code: int, success: int) -> dict[Any, float]:
    base = tuple(sorted(labels.items()))
    finished = (T0 + timedelta(seconds=42.5)).timestamp()
    counts = {
        "archived": 3,
        "no_images": 1,
        "expired": 1,
        "not_ready": 0,
        "retry": 1,
        "failed": 1,
        "skipped": 0,
        "images_absent": 0,
        "confirming": 0,
    }
    exp: dict[Any, float] = {
        ("idpass_archiver_passes", tuple(sorted({**labels, "outcome": o}.items()))): n
        for o, n in counts.items()
    }
    exp |= {
        ("idpass_archiver_images", base): 7,
        ("idpass_archiver_image_bytes", base): 1_982_943,
        ("idpass_archiver_run_duration_seconds", base): 42.5,
        ("idpass_archiver_at_risk", base): 2,
        ("idpass_archiver_expired", base): 1,
        ("idpass_archiver_images_absent", base): 0,
        ("idpass_archiver_slot_conflicts", base): 0,
        ("idpass_archiver_last_run_timestamp_seconds", base): finished,
        ("idpass_archiver_last_run_exit_code", base): exit_code,
        ("idpass_archiver_last_run_success", base): success,
        (
            "idpass_archiver_build_info",
            tuple(sorted({**labels, "version": __version__}.items())),
        ): 1,
    }
    return exp


def test_textfile_holds_exact_values(tmp_path):
    """The textfile parses with prometheus_client and holds the run's exact figures."""
    path = tmp_path / "idpass-archiver.prom"
    publish(_summary(), _settings(tmp_path, textfile_path=str(path)))
    got = _samples(path.read_text())
    labels = {"mode": "run"}
    expected = _expected(labels, exit_code=4, success=1)
    expected[(LAST_SUCCESS, (("mode", "run"),))] = (T0 + timedelta(seconds=42.5)).timestamp()
    assert got == expected
    assert [p.name for p in tmp_path.iterdir()] == ["idpass-archiver.prom"]  # no temp left


def test_textfile_keeps_last_success_across_failing_runs(tmp_path):
    """A run that fails systemically keeps the previous success's timestamp; the next
    success replaces it; with no earlier file a failed run has no last-success sample."""
    path = tmp_path / "a.prom"
    key = (LAST_SUCCESS, (("mode", "run"),))
    settings = _settings(tmp_path, textfile_path=str(path))

    publish(_summary(systemic="api_auth_error"), settings)
    got = _samples(path.read_text())
    assert key not in got
    assert got[("idpass_archiver_last_run_success", (("mode", "run"),))] == 0
    assert got[("idpass_archiver_last_run_exit_code", (("mode", "run"),))] == 3

    ok_at = T0 + timedelta(hours=1)
    publish(_summary(started=ok_at), settings)
    assert _samples(path.read_text())[key] == (ok_at + timedelta(seconds=42.5)).timestamp()

    for broken in (
        _summary(started=T0 + timedelta(hours=2), systemic="storage_unavailable"),
        _summary(started=T0 + timedelta(hours=3), stopped_early=True),
        _summary(started=T0 + timedelta(hours=4), sources=[{"name": "kyc", "error": "down"}]),
    ):
        publish(broken, settings)
        got = _samples(path.read_text())
        assert got[key] == (ok_at + timedelta(seconds=42.5)).timestamp()
        assert got[("idpass_archiver_last_run_success", (("mode", "run"),))] == 0
        finished = (broken.finished_at or T0).timestamp()
        assert got[("idpass_archiver_last_run_timestamp_seconds", (("mode", "run"),))] == finished


def test_success_is_a_completed_cycle():
    """Failed, retrying and expired passes do not make a run unsuccessful; a systemic
    failure, an early stop or a failed source sync do."""
    assert _summary().succeeded
    assert not _summary(systemic="api_auth_error").succeeded
    assert not _summary(stopped_early=True).succeeded
    assert not _summary(sources=[{"name": "kyc", "error": "unreachable"}]).succeeded
    assert _summary(sources=[{"name": "kyc", "error": None}]).succeeded


def test_exit_code_gauge_counts_a_failed_source(tmp_path):
    """A clean run whose source failed to sync reports exit code 1, as `run` returns."""
    path = tmp_path / "a.prom"
    s = RunSummary(run_id="r", started_at=T0, finished_at=T0, sources=[{"error": "down"}])
    write_textfile(s, path, labels={})
    assert _samples(path.read_text())[("idpass_archiver_last_run_exit_code", ())] == 1


def test_backfill_has_its_own_file_and_labels(tmp_path):
    """A backfill writes <name>-backfill.prom with mode="backfill" and the configured
    worker, and leaves the scheduled run's file alone."""
    path = tmp_path / "idpass-archiver.prom"
    settings = _settings(tmp_path, textfile_path=str(path))
    settings = settings.model_copy(
        update={"catalog": settings.catalog.model_copy(update={"worker_id": "backfill-2"})}
    )
    publish(_summary(), settings, command="backfill")
    assert not path.exists()
    bf = textfile_for(path, "backfill")
    assert bf.name == "idpass-archiver-backfill.prom"
    got = _samples(bf.read_text())
    assert got[("idpass_archiver_images", (("mode", "backfill"), ("worker", "backfill-2")))] == 7


def test_no_pass_id_or_reason_in_metrics(tmp_path):
    """Labels are low-cardinality only: outcome, mode, worker, version."""
    path = tmp_path / "a.prom"
    publish(_summary(), _settings(tmp_path, textfile_path=str(path)))
    text = path.read_text()
    assert not any(pid in text for pid in PIDS)
    assert "reason-of" not in text
    labels = {k for (_, ls) in _samples(text) for k, _ in ls}
    assert labels <= {"outcome", "mode", "worker", "version"}


def test_dry_run_and_unconfigured_publish_nothing(tmp_path):
    """A dry run writes no metrics, and without [metrics] targets nothing is written."""
    path = tmp_path / "a.prom"
    publish(_summary(dry_run=True), _settings(tmp_path, textfile_path=str(path)))
    assert not path.exists()
    publish(_summary(), _settings(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_textfile_must_end_in_prom(tmp_path):
    """The config names the key when the textfile would be ignored by node-exporter."""
    with pytest.raises(ConfigError, match=r"metrics\.textfile_path: .*\.prom"):
        _settings(tmp_path, textfile_path=str(tmp_path / "a.txt"))


class _Gateway:
    """A stub Pushgateway on 127.0.0.1 that records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode()
                gateway.requests.append((self.command, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_PUT = _record

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def gateway() -> Iterator[_Gateway]:
    g = _Gateway()
    try:
        yield g
    finally:
        g.close()


def test_push_to_gateway(tmp_path, gateway):
    """The run's metrics are POSTed under job/mode/worker and parse to exact values; a
    failing run omits last-success so that the gateway keeps the previous one."""
    settings = _settings(tmp_path, pushgateway_url=gateway.url, job="archiver-test")
    settings = settings.model_copy(
        update={"catalog": settings.catalog.model_copy(update={"worker_id": "w-1"})}
    )
    publish(_summary(), settings)
    publish(_summary(systemic="api_auth_error"), settings)

    (m1, p1, b1), (m2, p2, b2) = gateway.requests
    assert m1 == m2 == "POST"
    assert p1 == p2 == "/metrics/job/archiver-test/mode/run/worker/w-1"
    expected = _expected({}, exit_code=4, success=1)
    expected[(LAST_SUCCESS, ())] = (T0 + timedelta(seconds=42.5)).timestamp()
    assert _samples(b1) == expected
    failed = _samples(b2)
    assert (LAST_SUCCESS, ()) not in failed
    assert failed[("idpass_archiver_last_run_exit_code", ())] == 3
    assert failed[("idpass_archiver_last_run_success", ())] == 0


def test_metrics_failure_never_fails_the_run(tmp_path):
    """An unreachable gateway and an unwritable textfile are logged, not raised."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = _settings(
        tmp_path,
        pushgateway_url=f"http://127.0.0.1:{closed_port}",
        timeout_seconds=2,
        textfile_path=str(tmp_path / "missing-dir" / "a.prom"),
    )
    with capture_logs() as logs:
        publish(_summary(), settings)
    failed = [e for e in logs if e["event"] == "metrics_failed"]
    assert sorted(e["target"] for e in failed) == ["pushgateway", "textfile"]


def test_cli_run_publishes_metrics(cli_config, sandbox_http, gateway, pii_watch, tmp_path):
    """`idpass-archiver run` writes the textfile and pushes the same figures as its
    JSON summary; a later run refused by the API keeps the last success."""
    cfg, env = cli_config
    prom = tmp_path / "textfile" / "idpass-archiver.prom"
    prom.parent.mkdir()
    env = {
        **env,
        "IDPASS_ARCHIVER_METRICS__TEXTFILE_PATH": str(prom),
        "IDPASS_ARCHIVER_METRICS__PUSHGATEWAY_URL": gateway.url,
    }
    sandbox_http.post(
        "/_sandbox/passes",
        json={"count": 2, "image_retention_days": 30, "slots": ["probe", "id_photo"]},
    )
    ledger = cfg.parent / "ledger.jsonl"
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    assert (
        run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env).returncode == 0
    )
    run = run_cli(["run", "--json", "--config", str(cfg)], env=env, watch=pii_watch)
    assert run.returncode == 0, run.stderr[-2000:]
    doc = json.loads(run.stdout)
    finished_at = datetime.fromisoformat(doc["finished_at"].replace("Z", "+00:00"))
    started_at = datetime.fromisoformat(doc["started_at"].replace("Z", "+00:00"))
    finished = finished_at.timestamp()

    text = prom.read_text()
    pii_watch.output("metrics textfile", text)
    got = _samples(text)
    run_labels = (("mode", "run"),)
    assert got[("idpass_archiver_passes", (("mode", "run"), ("outcome", "archived")))] == 2
    assert got[("idpass_archiver_images", run_labels)] == doc["images"] == 4
    assert got[("idpass_archiver_image_bytes", run_labels)] == doc["image_bytes"] > 0
    duration = (finished_at - started_at).total_seconds()
    assert got[("idpass_archiver_run_duration_seconds", run_labels)] == duration
    assert got[("idpass_archiver_last_run_exit_code", run_labels)] == 0
    assert got[(LAST_SUCCESS, run_labels)] == finished
    ((method, path, body),) = gateway.requests
    assert (method, path) == ("POST", "/metrics/job/idpass-archiver/mode/run")
    pushed = _samples(body)
    assert pushed[("idpass_archiver_images", ())] == 4
    assert pushed[(LAST_SUCCESS, ())] == finished

    sandbox_http.post("/_sandbox/passes", json={"image_retention_days": 3})
    ledger.write_bytes(sandbox_http.get("/_sandbox/ledger").content)
    run_cli(["catalog", "import", str(ledger), "--config", str(cfg)], env=env)
    refused = run_cli(
        ["run", "--config", str(cfg)],
        env={**env, "IDPASS_ARCHIVER_API_TOKEN": "not-the-token"},
        watch=pii_watch,
    )
    assert refused.returncode == 3
    got = _samples(prom.read_text())
    assert got[("idpass_archiver_last_run_exit_code", run_labels)] == 3
    assert got[("idpass_archiver_last_run_success", run_labels)] == 0
    assert got[(LAST_SUCCESS, run_labels)] == finished
    assert (LAST_SUCCESS, ()) not in _samples(gateway.requests[-1][2])


def test_run_without_metrics_does_not_load_prometheus_client(cli_config):
    """With no [metrics] target, `run` publishes nothing and does not even import
    prometheus_client (start-up time of every run); with one, it does (above)."""
    cfg, env = cli_config
    run = run_cli(
        ["run", "--json", "--config", str(cfg)], env={**env, "PYTHONPROFILEIMPORTTIME": "1"}
    )
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "archiver.pipeline" in imported  # the import log is complete
    assert "prometheus_client" not in imported
