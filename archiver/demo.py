"""``idpass-archiver demo``: the whole product on one machine, nothing to set up.

Starts the ID Pass sandbox and a SeaweedFS S3 server on free loopback ports,
registers and completes a few dozen passes with varied retention and images,
imports the sandbox's pass ledger into the catalog (as a customer would import
their KYC export), runs one archival cycle, reads everything back and checks it,
then prints a summary. Both servers stop on exit, Ctrl+C and SIGTERM included.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from archiver import config as config_mod
from archiver.app import run_cycle, runtime
from archiver.catalog import PassUpsert
from archiver.catalog.keys import new_catalog_secret
from archiver.clock import isoformat
from archiver.core.format import Layout, PassManifest
from archiver.core.signing import Signer
from archiver.idpass.models import SLOTS
from archiver.logging import configure
from archiver.results import RunSummary
from archiver.sources.file import read_file
from archiver.store import ObjectStore
from archiver.verify import VerifyReport, VerifyScope, run_verify

if TYPE_CHECKING:  # started in run_demo, imported there (demo and tests only)
    from archiver.sandbox.seaweedfs import SeaweedFS
    from archiver.sandbox.server import SandboxServer

# (how many, what to ask the sandbox for, the outcome we expect)
PLAN: list[tuple[int, dict[str, Any], str]] = [
    (12, {"image_retention_days": 30}, "archived"),
    (
        5,
        {"image_retention_days": 365, "slots": [s for s in SLOTS if "document_3" not in s]},
        "archived",
    ),
    (5, {"image_retention_days": 7, "slots": ["probe", "document_1_front"]}, "archived"),
    (2, {"image_retention_days": 1, "slots": list(SLOTS)}, "archived"),
    (4, {"image_retention_days": 0}, "no_images"),
    (3, {"image_retention_days": 3, "completed_days_ago": 10}, "expired"),
    (2, {"image_retention_days": 30, "status": "in_progress"}, "not_ready"),
    (2, {"image_retention_days": 30, "status": "cancelled"}, "skipped"),
    (1, {"image_retention_days": 30, "status": "failed"}, "skipped"),
]


class _Stop(Exception):
    pass


class _Served(Exception):
    """Ctrl+C after --serve: the normal end of a served demo."""


def _serve(s3: Any, bucket: str, workdir: Path) -> None:
    """Keep S3 up for browsing until Ctrl+C or SIGTERM."""
    access, secret = s3.credentials
    env_file = workdir / "s3.env"
    _write_secret(
        env_file,
        f"AWS_ACCESS_KEY_ID={access}\nAWS_SECRET_ACCESS_KEY={secret}\n"
        f"AWS_DEFAULT_REGION=us-east-1\nS3_ENDPOINT={s3.endpoint_url}",
    )
    print()
    print(f"S3 stays up at {s3.endpoint_url} until Ctrl+C. Credentials: {env_file} (mode 600).")
    print("  with the AWS CLI:")
    print(f"    set -a; . {env_file}; set +a")
    print(f"    aws --endpoint-url $S3_ENDPOINT s3 ls --recursive s3://{bucket}/")
    print("  or with boto3 (installed with the archiver):")
    print(
        f'    set -a; . {env_file}; set +a; python -c "import boto3,os; '
        f"c=boto3.client('s3',endpoint_url=os.environ['S3_ENDPOINT']); "
        f"[print(o['Key'],o['Size']) for o in c.list_objects_v2(Bucket='{bucket}')['Contents']]\""
    )
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, _Stop):
        raise _Served() from None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


@dataclass
class _Say:
    quiet: bool

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def _effective_config(template: str, overrides: dict[str, str]) -> str:
    """The TOML template with ``IDPASS_ARCHIVER_<SECTION>__<KEY>`` values written in."""
    lines = template.splitlines()
    for name, value in overrides.items():
        section, key = name.removeprefix("IDPASS_ARCHIVER_").lower().split("__")
        if f"[{section}]" not in lines:
            lines += ["", f"[{section}]"]
        header = lines.index(f"[{section}]")
        end = next(
            (i for i in range(header + 1, len(lines)) if lines[i].startswith("[")), len(lines)
        )
        for i in range(header + 1, end):
            if lines[i].split("=", 1)[0].strip() == key:
                lines[i] = f"{key} = {value}"
                break
        else:
            lines.insert(header + 1, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")


def _seed(admin: httpx.Client) -> dict[str, str]:
    """Create the demo passes; return pass id → expected outcome."""
    now = datetime.fromisoformat(admin.get("/_sandbox/clock").json()["now"].replace("Z", "+00:00"))
    expected: dict[str, str] = {}
    for count, spec, outcome in PLAN:
        body = {k: v for k, v in spec.items() if k != "completed_days_ago"}
        body["count"] = count
        if "completed_days_ago" in spec:
            body["completed_at"] = isoformat(now - timedelta(days=spec["completed_days_ago"]))
        r = admin.post("/_sandbox/passes", json=body)
        r.raise_for_status()
        for p in r.json()["passes"]:
            expected[p["id"]] = outcome
    return expected


def _read_back(
    store: ObjectStore, layout: Layout, admin: httpx.Client, archived: list[str]
) -> tuple[int, int, list[str]]:
    """Fetch every archived object again; compare hashes with the manifest and the sandbox."""
    objects = nbytes = 0
    problems: list[str] = []
    for pid in archived:
        data = store.get(layout.manifest(pid))
        for entry in PassManifest.parse(data).objects:
            body = store.get(entry.key, version_id=entry.version_id)
            objects += 1
            nbytes += len(body)
            if hashlib.sha256(body).hexdigest() != entry.sha256:
                problems.append(f"{entry.key}: SHA-256 differs from the manifest")
            if entry.role == "image":
                original = admin.get(f"/_sandbox/passes/{pid}/images/{entry.slot}")
                if original.status_code != 200 or original.content != body:
                    problems.append(f"{entry.key}: bytes differ from the sandbox's image")
    return objects, nbytes, problems


def _write_config(workdir: Path, api_url: str, s3_url: str, token: str) -> tuple[Path, Signer]:
    """The demo's config file and its secret files (API token, catalog key, signing
    key), in ``workdir``; returns the config's path and the signing key."""
    settings_text = resources.files("archiver").joinpath("demo.toml").read_text("utf-8")
    config_path = workdir / "archiver.toml"
    config_path.write_text(settings_text, encoding="utf-8")
    _write_secret(workdir / "api-token", token)
    _write_secret(workdir / "catalog.key", new_catalog_secret())
    signer = Signer.generate()
    _write_secret(workdir / "signing-key.pem", signer.private_pem().decode().strip())
    (workdir / "signing-key.pub.pem").write_bytes(signer.verifier.public_pem())
    environ = {
        "IDPASS_ARCHIVER_API__BASE_URL": f'"{api_url}"',
        "IDPASS_ARCHIVER_API__TOKEN_FILE": f'"{workdir / "api-token"}"',
        "IDPASS_ARCHIVER_STORAGE__ENDPOINT_URL": f'"{s3_url}"',
        "IDPASS_ARCHIVER_CATALOG__URL": f'"sqlite:///{workdir / "catalog.db"}"',
        "IDPASS_ARCHIVER_CATALOG__KEY_FILE": f'"{workdir / "catalog.key"}"',
        "IDPASS_ARCHIVER_SIGNING__KEY_FILE": f'"{workdir / "signing-key.pem"}"',
    }
    # Write the effective config (addresses and secret-file paths filled in), so
    # that `status --config WORKDIR/archiver.toml` finds this demo's catalog.
    config_path.write_text(_effective_config(settings_text, environ), encoding="utf-8")
    return config_path, signer


def _export_ledger(admin: httpx.Client, workdir: Path, say: _Say) -> list[PassUpsert]:
    """The sandbox's pass ledger, written to ``workdir`` as the customer's export."""
    ledger = workdir / "ledger.jsonl"
    ledger.write_bytes(admin.get("/_sandbox/ledger").content)
    os.chmod(ledger, 0o600)  # it holds cipher keys, as the customer's export would
    items, bad = read_file(ledger)
    say(f"exported the sandbox's pass ledger: {len(items)} passes, {len(bad)} bad lines")
    return items


@dataclass
class _Checked:
    """What one archival cycle did, and what reading it back and verifying found."""

    summary: RunSummary
    archived: list[str]
    objects: int
    nbytes: int
    problems: list[str]
    audit: VerifyReport
    mismatched: list[str]
    sample: str | None
    sample_doc: dict[str, Any] | None

    @property
    def ok(self) -> bool:
        return not self.problems and not self.mismatched and bool(self.archived) and self.audit.ok


def _archive_and_check(
    settings: config_mod.Settings,
    items: list[PassUpsert],
    expected: dict[str, str],
    admin: httpx.Client,
    credentials: tuple[str, str],
    signer: Signer,
    say: _Say,
) -> _Checked:
    """Import ``items``, run one cycle, read every object back and verify the archive."""
    with runtime(settings, credentials=credentials) as rt:
        stats = rt.catalog.upsert(items)
        say(f"imported into the catalog: {stats.added} new")
        say("running one archival cycle ...")
        summary: RunSummary = asyncio.run(run_cycle(rt))
        layout = Layout(settings.storage.clean_prefix)
        archived = [r.pass_id for r in summary.results if r.outcome.value == "archived"]
        say("reading everything back ...")
        objects, nbytes, problems = _read_back(rt.store, layout, admin, archived)
        say("verifying the archive (signatures, versions, checksums, chain) ...")
        audit = run_verify(
            rt.store, layout, [signer.verifier], VerifyScope(everything=True, deep=True)
        )
        got = {r.pass_id: r.outcome.value for r in summary.results}
        mismatched = sorted(pid for pid, want in expected.items() if got.get(pid) != want)
        sample = sorted(archived)[0] if archived else None
        sample_doc = orjson.loads(rt.store.get(layout.manifest(sample))) if sample else None
    return _Checked(
        summary, archived, objects, nbytes, problems, audit, mismatched, sample, sample_doc
    )


def _result(
    checked: _Checked, expected: dict[str, str], settings: config_mod.Settings, workdir: Path
) -> dict[str, Any]:
    """The demo's result, as ``--json`` prints it (less ``seconds``)."""
    summary = checked.summary
    prefix = settings.storage.clean_prefix
    return {
        "work_dir": str(workdir),
        "passes": len(expected),
        "outcomes": dict(Counter(r.outcome.value for r in summary.results)),
        "images": sum(r.images for r in summary.results),
        "image_bytes": sum(r.image_bytes for r in summary.results),
        "read_back": {
            "objects": checked.objects,
            "bytes": checked.nbytes,
            "problems": checked.problems,
        },
        "verify": checked.audit.to_json(),
        "run_manifest_key": summary.run_manifest_key,
        "unexpected_outcomes": checked.mismatched,
        "run_exit_code": summary.exit_code,
        "bucket": settings.storage.bucket,
        "prefix": prefix,
        "sample_manifest_key": Layout(prefix).manifest(checked.sample) if checked.sample else None,
    }


def _demo(
    workdir: Path,
    s3: SeaweedFS,
    sandbox: SandboxServer,
    token: str,
    credentials: tuple[str, str],
    *,
    as_json: bool,
    serve: bool,
    say: _Say,
    t0: float,
) -> int:
    """The demo with both servers up: configure, seed, archive, check, report."""
    config_path, signer = _write_config(workdir, sandbox.base_url, s3.endpoint_url, token)
    settings = config_mod.load(config_path, {})
    s3.create_bucket(
        settings.storage.bucket, object_lock=True, kms_key_id=settings.storage.kms_key_id
    )
    with httpx.Client(
        base_url=sandbox.base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ) as admin:
        expected = _seed(admin)
        say(f"registered and completed {len(expected)} passes in the sandbox")
        items = _export_ledger(admin, workdir, say)
        checked = _archive_and_check(settings, items, expected, admin, credentials, signer, say)
        result = _result(checked, expected, settings, workdir)
        result["seconds"] = round(time.monotonic() - t0, 1)
        if as_json:
            sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        else:
            _print_summary(result, checked.sample_doc, workdir, checked.ok)
        if serve and not as_json:
            _serve(s3, settings.storage.bucket, workdir)
        return 0 if checked.ok else 1


def run_demo(workdir: Path | None = None, as_json: bool = False, serve: bool = False) -> int:
    from archiver.sandbox.seaweedfs import SeaweedFS
    from archiver.sandbox.server import SandboxServer

    say = _Say(quiet=False)
    configure("warning", "auto", sys.stderr)
    workdir = (workdir or Path(tempfile.mkdtemp(prefix="idpass-archiver-demo-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "catalog.db").exists():
        print(
            f"idpass-archiver demo: {workdir} already holds a demo; choose an empty --workdir",
            file=sys.stderr,
        )
        return 2
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    t0 = time.monotonic()
    token = secrets.token_urlsafe(24)
    access_key, secret_key = "demo" + secrets.token_hex(6), secrets.token_urlsafe(24)
    try:
        say(f"work dir: {workdir}")
        say("starting SeaweedFS (S3) and the ID Pass sandbox on loopback ...")
        with (
            SeaweedFS(workdir / "s3", access_key=access_key, secret_key=secret_key) as s3,
            SandboxServer(token) as sandbox,
        ):  # both servers stop when this block ends, Ctrl+C included
            return _demo(
                workdir,
                s3,
                sandbox,
                token,
                (access_key, secret_key),
                as_json=as_json,
                serve=serve,
                say=say,
                t0=t0,
            )
    except _Served:
        print("\nidpass-archiver demo: servers stopped", file=sys.stderr)
        return 0
    except (KeyboardInterrupt, _Stop):
        print("\nidpass-archiver demo: interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_summary(
    result: dict[str, Any], sample_doc: dict[str, Any] | None, workdir: Path, ok: bool
) -> None:
    mb = result["image_bytes"] / 1e6
    print()
    print("idpass-archiver demo: summary")
    print(f"  passes:   {result['passes']} in the sandbox, all imported from its ledger")
    for outcome, n in sorted(result["outcomes"].items()):
        print(f"    {outcome:<10} {n}")
    print(f"  images:   {result['images']} archived, {mb:.1f} MB")
    rb = result["read_back"]
    verdict = "all match" if not rb["problems"] else f"{len(rb['problems'])} PROBLEMS"
    print(
        f"  read back: {rb['objects']} objects, {rb['bytes'] / 1e6:.1f} MB, "
        f"SHA-256 and bytes vs the sandbox: {verdict}"
    )
    for p in rb["problems"][:10]:
        print(f"    {p}")
    v = result["verify"]
    print(
        f"  verify --deep: {v['passes_checked']} signed manifests, {v['objects_checked']} "
        f"objects, {v['run_manifests_checked']} run manifest: "
        + ("clean" if v["ok"] else f"{len(v['findings'])} FINDINGS")
    )
    if result["unexpected_outcomes"]:
        print(f"  unexpected outcomes for: {', '.join(result['unexpected_outcomes'])}")
    print(
        f"  a real run would exit {result['run_exit_code']}"
        + (
            "  (4 = passes expired before archiving: the compliance alarm)"
            if result["run_exit_code"] == 4
            else ""
        )
    )
    print(f"  took {result['seconds']} s")
    print()
    print("where it is:")
    print(f"  s3://{result['bucket']}/{result['prefix']}/passes/<pass_id>/  (SSE-KMS, versioned)")
    print(f"  S3 data, catalog and config: {workdir}")
    if sample_doc:
        print(f"  sample manifest: s3://{result['bucket']}/{result['sample_manifest_key']}")
        for o in sample_doc["objects"]:
            rel = o["key"].split("/passes/", 1)[-1].split("/", 1)[-1]
            print(f"    {rel:<32} {o['size']:>9} B  sha256 {o['sha256'][:16]}…")
    print()
    print("how to look at it:")
    print(f"  idpass-archiver status --config {workdir / 'archiver.toml'}")
    print("  idpass-archiver demo --serve    keeps S3 up after the run to browse the bucket")
    print()
    print("demo result:", "OK" if ok else "FAILED")
