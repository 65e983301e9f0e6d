"""Workers sharing one PostgreSQL catalog: real processes, real sandbox, real SeaweedFS.

Each worker is ``python -m archiver run`` as an operator starts it, configured by a
TOML file whose catalog URL comes from ``catalog.url_file``, and named through
``IDPASS_ARCHIVER_CATALOG__WORKER_ID``. What each pass got is read from three
places: the object versions in the (versioned) bucket, each worker's JSON summary
and ``pass_done`` log events, and the catalog.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from archiver.catalog.keys import new_catalog_secret
from archiver.catalog.sql import SqlCatalog
from tests.fixtures.cli import TEST_SIGNER, TEST_SIGNING_KEY
from tests.helpers import signed_run_manifests, unlisted_manifests

ARCHIVER = [sys.executable, "-m", "archiver"]
PREFIX = "workers"
SLOTS = ["id_photo_cropped"]  # one small image a pass keeps the test quick


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def finish(self, timeout: float = 180) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Wait for the run to end; its JSON summary and its JSON log events."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"{self.name} did not finish in {timeout}s:\n{self.tail()}")
        assert self.proc.returncode == 0, (
            f"{self.name} exited {self.proc.returncode}:\n{self.tail()}"
        )
        return json.loads(self.out.read_text()), self.events()

    def events(self) -> list[dict[str, Any]]:
        lines = self.err.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.err.read_text().splitlines()[-lines:])


@dataclass
class Bed:
    """A sandbox, a bucket and a PostgreSQL catalog, and how to start workers on them."""

    tmp: Path
    config: Path
    env: dict[str, str]
    url: str
    http: Any
    pii: Any

    def seed(self, count: int, **spec: Any) -> list[str]:
        r = self.http.post("/_sandbox/passes", json={"count": count, "slots": SLOTS, **spec})
        assert r.status_code == 201, r.text
        return [p["id"] for p in r.json()["passes"]]

    def import_ledger(self) -> None:
        ledger = self.tmp / "ledger.jsonl"
        ledger.write_bytes(self.http.get("/_sandbox/ledger").content)
        proc = subprocess.run(
            [*ARCHIVER, "catalog", "import", str(ledger), "--config", str(self.config), "--json"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.pii.output("workers import stdout", proc.stdout)
        self.pii.output("workers import stderr", proc.stderr)
        assert proc.returncode == 0, proc.stderr

    def start(self, name: str, **settings: Any) -> Worker:
        """``idpass-archiver run --json`` as worker ``name``; ``settings`` are
        ``section__key`` environment overrides."""
        env = {**self.env, "IDPASS_ARCHIVER_CATALOG__WORKER_ID": name}
        env.update({f"IDPASS_ARCHIVER_{k.upper()}": str(v) for k, v in settings.items()})
        n = len(list(self.tmp.glob("run-*.out")))
        out, err = self.tmp / f"run-{n}-{name}.out", self.tmp / f"run-{n}-{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                [*ARCHIVER, "run", "--config", str(self.config), "--json"],
                env=env,
                stdout=stdout,
                stderr=stderr,
            )
        return Worker(name, proc, out, err)

    def watch(self, *workers: Worker) -> None:
        for w in workers:
            self.pii.output(f"worker {w.name} stdout", w.out.read_text())
            self.pii.output(f"worker {w.name} stderr", w.err.read_text())

    def leases(self) -> dict[str, tuple[str, datetime]]:
        """pass_id -> (lease owner, lease expiry) for every leased pass."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT pass_id, lease_owner, lease_expires_at FROM passes "
                        "WHERE lease_owner IS NOT NULL"
                    )
                ).all()
        finally:
            engine.dispose()
        return {pid: (owner, exp.replace(tzinfo=UTC)) for pid, owner, exp in rows}

    def counts(self) -> dict[str, int]:
        cat = SqlCatalog(self.url)
        try:
            return dict(cat.counts())
        finally:
            cat.close()


@pytest.fixture
def bed(tmp_path, sandbox_reset, sandbox_http, seaweedfs, s3_bucket, pg_url, pii_watch) -> Bed:
    url_file = tmp_path / "catalog-url"
    url_file.write_text(pg_url + "\n")
    config = tmp_path / "archiver.toml"
    config.write_text(
        f"""
[api]
base_url = "{sandbox_reset.base_url}"
[storage]
bucket = "{s3_bucket}"
prefix = "{PREFIX}"
endpoint_url = "{seaweedfs.endpoint_url}"
region = "us-east-1"
kms_key_id = "archive-key"
[catalog]
url_file = "{url_file}"
[logging]
format = "json"
"""
    )
    access, secret = seaweedfs.credentials
    env = {k: v for k, v in os.environ.items() if not k.startswith("IDPASS_ARCHIVER_")}
    env.update(
        {
            "IDPASS_ARCHIVER_API_TOKEN": sandbox_reset.token,
            "IDPASS_ARCHIVER_CATALOG_KEY": new_catalog_secret(),
            "IDPASS_ARCHIVER_SIGNING_KEY": TEST_SIGNING_KEY,
            "AWS_ACCESS_KEY_ID": access,
            "AWS_SECRET_ACCESS_KEY": secret,
            # confirming reads of null slots at once, in the same run
            "IDPASS_ARCHIVER_PIPELINE__CONFIRM_SPACING_SECONDS": "0",
        }
    )
    return Bed(tmp_path, config, env, pg_url, sandbox_http, pii_watch)


def _archived_ids(events: list[dict[str, Any]]) -> list[str]:
    return [
        e["pass_id"] for e in events if e["event"] == "pass_done" and e["outcome"] == "archived"
    ]


def _assert_written_once(seaweedfs, bucket: str, ids: list[str]) -> None:
    """Every object in the bucket was written exactly once; every pass has a manifest."""
    versions = seaweedfs.versions_per_key(bucket, f"{PREFIX}/passes/")
    rewritten = {k: n for k, n in versions.items() if n != 1}
    assert rewritten == {}, f"objects written more than once: {rewritten}"
    manifests = {k.split("/")[2] for k in versions if k.endswith("/manifest.json")}
    assert manifests == set(ids)
    # one image, record.json, SHA256SUMS and manifest.json a pass: nothing else
    assert len(versions) == 5 * len(ids)


def test_four_workers_archive_each_pass_exactly_once(bed, seaweedfs, s3_bucket):
    """Four worker processes started together on one PostgreSQL catalog archive 200
    passes between them: each pass by exactly one worker, each object written once,
    and every worker does a share."""
    ids = bed.seed(200, image_retention_days=20)
    bed.import_ledger()
    workers = [bed.start(f"worker-{n}", pipeline__concurrency=2) for n in range(4)]
    results = [w.finish() for w in workers]
    bed.watch(*workers)

    archived_by = {
        w.name: _archived_ids(events) for w, (_, events) in zip(workers, results, strict=True)
    }
    for w, (summary, _) in zip(workers, results, strict=True):
        assert summary["worker_id"] == w.name
        assert summary["counts"]["archived"] == len(archived_by[w.name])
        # reused: only the image a confirming read stored (a slot null in the answer)
        assert summary["already_archived"] == 0
        assert summary["objects_reused"] <= summary["images"]
        assert summary["counts"]["archived"] > 0, f"{w.name} archived nothing: {archived_by}"
    everything = [pid for done in archived_by.values() for pid in done]
    assert len(everything) == len(set(everything)), "a pass was archived by two workers"
    assert sorted(everything) == sorted(ids)
    assert sum(s["counts"]["archived"] for s, _ in results) == 200

    _assert_written_once(seaweedfs, s3_bucket, ids)
    assert bed.counts() == {"archived": 200}
    assert bed.leases() == {}


def _wait(what: str, check, timeout: float, worker: Worker | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if worker is not None and worker.proc.poll() is not None:
            pytest.fail(f"{worker.name} exited ({worker.proc.returncode}) before {what}")
        time.sleep(0.05)
    detail = f":\n{worker.tail()}" if worker is not None else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}{detail}")


def test_a_killed_workers_passes_are_taken_over_once_its_lease_expires(
    bed, sandbox_http, seaweedfs, s3_bucket
):
    """Worker A hangs inside a pass (the API stalls) and is killed with SIGKILL. Its
    leases hold: worker B, run before they expire, archives everything else and none
    of A's passes. Run again after the expiry, B archives A's passes, each once."""
    lease = 15
    # earliest deadlines: A claims these first, and only these (a batch of 3, below)
    urgent = bed.seed(3, image_retention_days=2)
    rest = bed.seed(6, image_retention_days=20)
    bed.import_ledger()
    for pid in urgent:
        r = sandbox_http.post(
            "/_sandbox/faults",
            json={"kind": "delay", "seconds": lease, "path": "/idpass/details", "pass_id": pid},
        )
        assert r.status_code == 200, r.text

    # One request and one body at a time: A claims 1 + 2 x 1 = 3 passes, the urgent
    # ones; one stalls in the API and the other two wait for the request slot, so A
    # writes nothing for the passes it holds. (With more in flight or more claimed, A
    # would upload some meanwhile and B would reuse them: correct, but not what this
    # test pins down.)
    a = bed.start(
        "worker-a", pipeline__concurrency=1, api__concurrency=1, catalog__lease_seconds=lease
    )

    def a_is_inside_first_pass() -> bool:
        pending = {f["pass_id"] for f in sandbox_http.get("/_sandbox/faults").json()["faults"]}
        return len(pending) < len(urgent)  # a stalled details call has begun

    _wait("worker A to be inside its first pass", a_is_inside_first_pass, 60, a)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(timeout=30)
    assert a.proc.returncode == -signal.SIGKILL
    sandbox_http.delete("/_sandbox/faults")  # the API answers normally from now on
    held = bed.leases()
    assert held, "worker A held no leases when killed"
    assert {owner for owner, _ in held.values()} == {"worker-a"}
    assert set(urgent) <= set(held)
    expiry = min(exp for _, exp in held.values())

    b1 = bed.start("worker-b", pipeline__concurrency=2)
    summary, events = b1.finish()
    finished = datetime.now(UTC)
    assert finished < expiry, (
        f"worker B finished at {finished}, after A's leases expired at {expiry}: "
        "the run before expiry proves nothing (raise `lease`)"
    )
    first = _archived_ids(events)
    assert sorted(first) == sorted(set(urgent + rest) - set(held))
    assert summary["passes"] == len(first), "B touched a pass A holds"
    assert set(bed.leases()) == set(held), "A's leases did not survive B's run"

    _wait(
        "worker A's leases to expire",
        lambda: datetime.now(UTC) > max(exp for _, exp in held.values()),
        lease + 5,
    )
    b2 = bed.start("worker-b", pipeline__concurrency=2)
    summary, events = b2.finish()
    bed.watch(a, b1, b2)
    second = _archived_ids(events)
    assert sorted(second) == sorted(held)
    assert summary["already_archived"] == 0
    assert summary["objects_reused"] <= summary["images"]  # stored by a confirming read

    _assert_written_once(seaweedfs, s3_bucket, urgent + rest)
    assert bed.counts() == {"archived": len(urgent + rest)}
    assert bed.leases() == {}


def _verify_all(bed: Bed) -> tuple[int, Any]:
    """``verify --all`` as an auditor runs it: read access and the public key."""
    pub = bed.tmp / "signing.pub.pem"
    pub.write_bytes(TEST_SIGNER.verifier.public_pem())
    auditor = {k: v for k, v in bed.env.items() if not k.startswith("IDPASS_ARCHIVER_")}
    args = ["verify", "--config", str(bed.config), "--public-key", str(pub), "--json", "--all"]
    proc = subprocess.run(
        [*ARCHIVER, *args],
        env=auditor,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_passes_committed_by_killed_workers_are_listed_by_a_survivor(bed, seaweedfs, s3_bucket):
    """Three workers share 200 passes; two are SIGKILLed once each has committed
    passes, so those passes are in no run manifest. The third finishes; after the
    killed workers' leases expire a survivor run archives what they held and lists
    what they committed as recovered. Every pass manifest, by key and SHA-256, is then
    in a signed run manifest, and ``verify --all`` is clean."""
    lease = 10
    ids = bed.seed(200, image_retention_days=20)
    bed.import_ledger()
    slow = {"api__requests_per_second": 10, "catalog__lease_seconds": lease}
    victims = [bed.start(f"victim-{n}", pipeline__concurrency=2, **slow) for n in range(2)]
    other = bed.start("worker-c", pipeline__concurrency=2, **slow)
    for v in victims:
        _wait(f"{v.name} to commit passes", lambda v=v: len(_archived_ids(v.events())) >= 5, 90, v)
    for v in victims:
        os.kill(v.proc.pid, signal.SIGKILL)
        v.proc.wait(timeout=30)
        assert v.proc.returncode == -signal.SIGKILL
    by_victims = {pid for v in victims for pid in _archived_ids(v.events())}
    other.finish()
    client = seaweedfs.client()
    assert set(unlisted_manifests(client, s3_bucket, PREFIX, TEST_SIGNER.verifier)) >= {
        f"{PREFIX}/passes/{pid}/manifest.json" for pid in by_victims
    }

    _wait(
        "the killed workers' leases to expire",
        lambda: all(exp < datetime.now(UTC) for _, exp in bed.leases().values()),
        lease + 10,
    )
    survivor = bed.start("survivor", pipeline__concurrency=2)
    survivor.finish()
    bed.watch(*victims, other, survivor)
    assert bed.counts() == {"archived": 200}
    assert unlisted_manifests(client, s3_bucket, PREFIX, TEST_SIGNER.verifier) == []
    runs = signed_run_manifests(client, s3_bucket, PREFIX, TEST_SIGNER.verifier)
    recovered = {p.pass_id for run in runs for p in run.passes if p.recovered}
    assert recovered >= by_victims
    assert recovered <= set(ids)
    code, doc = _verify_all(bed)
    assert (code, doc["findings"]) == (0, []), doc["finding_counts"]
