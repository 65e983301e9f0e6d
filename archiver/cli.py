"""The command line: a thin shell that parses, configures, calls, and sets the exit code.

Exit codes (README, "Exit codes"):
  0  all due work done
  1  some passes failed or are waiting to retry
  2  usage or configuration error
  3  systemic failure (API auth, storage unreachable or refusing, catalog)
  4  passes expired without being archived (compliance alarm)
  5  another run holds the (SQLite) catalog lock; this one did nothing
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import structlog

from archiver import __version__, errors
from archiver import config as config_mod
from archiver.errors import AlreadyRunning, ArchiverError, ConfigError, StoreError
from archiver.results import EXIT_INCOMPLETE, EXIT_OK, EXIT_SYSTEMIC, EXIT_USAGE, RunSummary

if TYPE_CHECKING:
    from archiver.catalog import PassUpsert, UpsertStats

EXIT_ALREADY_RUNNING = 5

EPILOG = """\
examples:
  idpass-archiver demo                                  # everything local, nothing to set up
  idpass-archiver run --config /etc/idpass-archiver/archiver.toml
  IDPASS_ARCHIVER_CONFIG=archiver.toml idpass-archiver run --dry-run --limit 20
  idpass-archiver run --pass 0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11
  idpass-archiver catalog import ledger.jsonl
  echo 0b6f3c9e-6a55-4a43-9d8f-2f0a8f7e3c11 | idpass-archiver enqueue -
  idpass-archiver status --json
  idpass-archiver report --since 2026-01-01 --format html --output coverage.html

exit codes: 0 done, 1 some failed/retrying, 2 usage/config error,
            3 systemic failure, 4 passes expired without archiving,
            5 another run holds the catalog lock (nothing done)
"""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration (default: ${config_mod.CONFIG_ENV})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="idpass-archiver",
        description="Archive GlobalData ID Pass verification images to encrypted S3 "
        "before their retention window closes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one archival cycle (for cron or a CronJob)",
        description="Archive every due pass once, most urgent first, then exit.",
    )
    _add_config(run)
    run.add_argument("--limit", type=int, metavar="N", help="archive at most N passes")
    run.add_argument(
        "--pass",
        dest="pass_ids",
        action="append",
        metavar="ID",
        help="archive or re-check only this pass (repeatable)",
    )
    run.add_argument(
        "--dry-run", action="store_true", help="list what would be fetched; write nothing"
    )
    run.add_argument("--json", action="store_true", help="print the run summary as JSON")
    run.add_argument(
        "--no-sync", action="store_true", help="do not read the configured sources first"
    )

    sync = sub.add_parser(
        "sync",
        help="read new and changed passes from the configured [[sources]] into the catalog",
    )
    _add_config(sync)
    sync.add_argument("--source", metavar="NAME", help="only this source")
    sync.add_argument("--json", action="store_true")

    enq = sub.add_parser(
        "enqueue",
        help="add pass ids to the catalog ('-' reads ids from stdin, one per line)",
    )
    _add_config(enq)
    enq.add_argument("pass_ids", nargs="+", metavar="PASS_ID")
    enq.add_argument("--json", action="store_true")

    cat = sub.add_parser("catalog", help="catalog maintenance")
    cat_sub = cat.add_subparsers(dest="catalog_command", metavar="ACTION")
    imp = cat_sub.add_parser(
        "import",
        help="import a JSONL or CSV pass ledger (id, cipher_key, completed_at, "
        "image_retention_days)",
    )
    _add_config(imp)
    imp.add_argument("file", type=Path)
    imp.add_argument("--format", choices=["jsonl", "csv"], help="default: from the extension")
    imp.add_argument("--json", action="store_true")
    reb = cat_sub.add_parser(
        "rebuild",
        help="reconstruct the catalog from the S3 manifests alone (S3 is the source of truth)",
    )
    _add_config(reb)
    reb.add_argument("--json", action="store_true")

    back = sub.add_parser(
        "backfill",
        help="archive the passes completed in a date range, or listed in a file",
        description="Archive every pass of the catalog completed in [FROM, TO] (whole "
        "UTC days) or listed in --ids-file (one id per line; unknown ids are enqueued). "
        "Resumable: a rerun continues where the last one stopped. Rate-limited with "
        "--rate (requests per second; default api.requests_per_second).",
    )
    _add_config(back)
    back.add_argument("--completed-from", type=_day, metavar="DATE")
    back.add_argument("--completed-to", type=_day_end, metavar="DATE")
    back.add_argument("--ids-file", type=Path, metavar="FILE")
    back.add_argument("--rate", type=float, metavar="RPS", help="details requests per second")
    back.add_argument("--limit", type=int, metavar="N")
    back.add_argument("--dry-run", action="store_true")
    back.add_argument("--json", action="store_true")

    doc = sub.add_parser(
        "doctor",
        help="preflight: API and token, signing key, bucket encryption/versioning/lock, "
        "a scratch write-read-delete, clock skew",
    )
    _add_config(doc)
    doc.add_argument("--json", action="store_true")

    ver = sub.add_parser(
        "verify",
        help="prove from the bucket alone that every archived object is there, unchanged",
        description="Check manifest signatures, every listed object's version, size, "
        "checksum, encryption and retention (--deep: download and hash), orphan objects "
        "and the run-manifest hash chain. Needs read access and the public key only. "
        "Exit 0 when clean, 1 on any finding.",
    )
    _add_config(ver)
    what = ver.add_mutually_exclusive_group()
    what.add_argument("--pass", dest="pass_id", metavar="ID")
    what.add_argument("--run", metavar="RUN_ID")
    what.add_argument("--since", type=_day, metavar="DATE", help="runs started since DATE")
    what.add_argument("--all", action="store_true", help="the whole archive (the default)")
    ver.add_argument("--sample", type=float, metavar="PERCENT", help="check a random share")
    ver.add_argument("--seed", type=int, help="seed for --sample (repeatable samples)")
    ver.add_argument("--deep", action="store_true", help="download and hash every object")
    ver.add_argument(
        "--public-key", action="append", default=[], metavar="FILE", help="trusted key (PEM)"
    )
    ver.add_argument(
        "--identity",
        type=Path,
        metavar="FILE",
        help="age identity file: with --deep, also decrypt and check the plaintext hashes",
    )
    ver.add_argument("--json", action="store_true")

    exp = sub.add_parser(
        "export",
        help="write one pass's images and record to a directory, checked and decrypted",
    )
    _add_config(exp)
    exp.add_argument("--pass", dest="pass_id", required=True, metavar="ID")
    exp.add_argument("--identity", type=Path, metavar="FILE", help="age identity file")
    exp.add_argument("--to", type=Path, required=True, metavar="DIR")
    exp.add_argument("--public-key", action="append", default=[], metavar="FILE")

    sched = sub.add_parser(
        "schedule",
        help="long-running: run a cycle on every tick of schedule.cron until SIGTERM",
        description="Run one archival cycle on every tick of schedule.cron. SIGTERM or "
        "SIGINT: finish the passes in flight, record the run, exit 0.",
    )
    _add_config(sched)

    status = sub.add_parser("status", help="counts per outcome, next deadlines, the last run")
    _add_config(status)
    status.add_argument("--json", action="store_true")

    report = sub.add_parser(
        "report",
        help="coverage report for a compliance review (table, JSON or one HTML file)",
        description="Passes known, archived, expired without archiving and failed; "
        "passes, images and MB archived per UTC day and passes expired per day (since "
        "--since); the next deadlines; the failed passes with their reasons. --format "
        "html writes one self-contained page with a chart. Reads the catalog only.",
    )
    _add_config(report)
    report.add_argument(
        "--since", type=_day, metavar="DATE", help="daily figures from DATE (YYYY-MM-DD, UTC)"
    )
    report.add_argument("--format", choices=["table", "json", "html"], default="table")
    report.add_argument("--output", type=Path, metavar="FILE", help="default: stdout")

    demo = sub.add_parser(
        "demo",
        help="start a local ID Pass sandbox and S3 server, archive a few dozen passes, "
        "read them back",
    )
    demo.add_argument(
        "--workdir",
        type=Path,
        help="where the demo keeps its S3 data, catalog and config (default: a new temp dir)",
    )
    demo.add_argument("--json", action="store_true", help="print the summary as JSON")
    demo.add_argument(
        "--serve",
        action="store_true",
        help="after the summary, keep S3 running (until Ctrl+C) to browse the archive",
    )
    return parser


def _setup_logging(settings: config_mod.Settings | None, args: argparse.Namespace) -> None:
    from archiver.logging import configure

    level = settings.logging.level if settings else "info"
    fmt = settings.logging.format if settings else "auto"
    # With --json the machine-readable result owns stdout; logs go to stderr.
    stream = sys.stderr if getattr(args, "json", False) else sys.stdout
    configure(level, fmt, stream)


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def cmd_run(args: argparse.Namespace) -> int:
    from archiver.app import run_cycle_sync, run_lock, runtime
    from archiver.sources.file import normalise_pass_id
    from archiver.sources.sync import SourcePool, sync_sources

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    if args.limit is not None and args.limit < 1:
        raise ConfigError("--limit must be at least 1")
    pass_ids = None
    if args.pass_ids:
        try:
            pass_ids = [normalise_pass_id(p) for p in args.pass_ids]
        except ValueError as exc:
            raise ConfigError(f"--pass: {exc}") from None
    with run_lock(settings) as exclusive, runtime(settings) as rt, SourcePool(settings) as pool:
        settle_gc()
        reports = []
        if settings.sources and not args.dry_run and not args.no_sync:
            reports = sync_sources(settings, rt.catalog, pool=pool, clock=rt.clock)
        summary = run_cycle_sync(
            rt,
            limit=args.limit,
            pass_ids=pass_ids,
            dry_run=args.dry_run,
            key_lookup=pool,
            exclusive=exclusive,
        )
    summary.sources = [r.to_json() for r in reports]
    _report_run(summary, args, settings)
    if summary.exit_code == EXIT_OK and not all(r.ok for r in reports):
        return EXIT_INCOMPLETE
    return summary.exit_code


def cmd_sync(args: argparse.Namespace) -> int:
    from archiver.app import open_catalog
    from archiver.sources.sync import SourcePool, sync_sources

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    if not settings.sources:
        raise ConfigError("no [[sources]] are configured", key="sources")
    catalog = open_catalog(settings)
    try:
        with SourcePool(settings) as pool:
            reports = sync_sources(settings, catalog, only=args.source, pool=pool)
    finally:
        catalog.close()
    if args.json:
        _print_json({"sources": [r.to_json() for r in reports]})
    else:
        for r in reports:
            doc = r.to_json()
            print(
                f"{doc['name']} ({doc['kind']}): read {doc['read']}, {doc['added']} new, "
                f"{doc['updated']} updated, {doc['unchanged']} unchanged, "
                f"{doc['rejected']} rejected, watermark {doc.get('watermark_after') or '-'}"
                + (f", FAILED: {doc['error']}" if doc.get("error") else "")
            )
            for rej in doc.get("rejections", []):
                print(f"  {doc['name']} row {rej['row']}: {rej['reason']}", file=sys.stderr)
    ok = all(r.ok and not r.to_json()["rejected"] for r in reports)
    return EXIT_OK if ok else EXIT_INCOMPLETE


def _day(text: str) -> datetime:
    """YYYY-MM-DD (UTC midnight) or a full ISO 8601 timestamp with a zone."""
    try:
        if len(text) == 10:
            return datetime.fromisoformat(text).replace(tzinfo=UTC)
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None
    if ts.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no timezone")
    return ts


def _day_end(text: str) -> datetime:
    """The exclusive end of a range: a bare date means the whole of that day."""
    ts = _day(text)
    return ts + timedelta(days=1) if len(text) == 10 else ts


def cmd_backfill(args: argparse.Namespace) -> int:
    from archiver.app import run_cycle_sync, run_lock, runtime
    from archiver.catalog import PassUpsert, Scope
    from archiver.clock import SystemClock
    from archiver.progress import Progress
    from archiver.sources.file import normalise_pass_id
    from archiver.sources.sync import SourcePool

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    if args.ids_file is None and (args.completed_from is None or args.completed_to is None):
        raise ConfigError("backfill needs --completed-from and --completed-to, or --ids-file")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be positive (requests per second)")
    ids: tuple[str, ...] | None = None
    if args.ids_file is not None:
        try:
            lines = args.ids_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read {args.ids_file} ({exc.strerror})") from None
        parsed, bad = [], []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                parsed.append(normalise_pass_id(line))
            except ValueError as exc:
                bad.append(f"line {n}: {exc}")
        for b in bad:
            print(f"  {args.ids_file}: {b}", file=sys.stderr)
        ids = tuple(dict.fromkeys(parsed))
    scope = Scope(
        completed_from=args.completed_from,
        completed_to=args.completed_to,
        pass_ids=ids,
        waive_backoff_before=SystemClock().now(),
    )
    with run_lock(settings) as exclusive, runtime(settings) as rt, SourcePool(settings) as pool:
        if ids:
            rt.catalog.upsert(PassUpsert(pass_id=pid, source="backfill") for pid in ids)
        total = rt.catalog.count_due(SystemClock().now(), scope)
        progress = Progress(total)
        structlog.get_logger("archiver.cli").info("backfill_started", total=total)
        try:
            summary = run_cycle_sync(
                rt,
                scope=scope,
                dry_run=args.dry_run,
                limit=args.limit,
                requests_per_second=args.rate,
                on_result=progress,
                key_lookup=pool,
                exclusive=exclusive,
            )
        finally:
            progress.close()
    _report_run(summary, args, settings)
    return summary.exit_code


def _trusted_keys(settings: config_mod.Settings, extra: Sequence[str]) -> list[Any]:
    """The public keys to trust: given files, signing.public_key_files, and the
    configured signing key's own."""
    from archiver.core.signing import Signer, SigningKeyError, Verifier

    trusted: list[Verifier] = []
    paths: list[str | Path] = [*extra, *settings.signing.public_key_files]
    for path in paths:
        try:
            trusted.append(Verifier.from_pem(Path(path).read_bytes()))
        except OSError as exc:
            raise ConfigError(f"cannot read public key {path} ({exc.strerror})") from None
        except SigningKeyError as exc:
            raise ConfigError(f"public key {path}: {exc}") from None
    if settings.signing.key is not None:
        try:
            trusted.append(
                Signer.from_pem(settings.signing.key.get_secret_value().encode()).verifier
            )
        except SigningKeyError as exc:
            raise ConfigError(str(exc), key="signing.key_file") from None
    if not trusted:
        raise ConfigError(
            "the public key to trust is needed: --public-key FILE or signing.public_key_files"
        )
    return trusted


def cmd_export(args: argparse.Namespace) -> int:
    from archiver.app import open_store
    from archiver.core.format import Layout
    from archiver.export import export_pass, load_identities
    from archiver.sources.file import normalise_pass_id

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    try:
        pid = normalise_pass_id(args.pass_id)
    except ValueError as exc:
        raise ConfigError(f"--pass: {exc}") from None
    identities = load_identities(args.identity) if args.identity else []
    files = export_pass(
        open_store(settings),
        Layout(settings.storage.clean_prefix),
        pid,
        _trusted_keys(settings, args.public_key),
        identities,
        args.to,
    )
    for f in files:
        print(f)
    print(f"exported {len(files)} files of pass {pid}, each checked against its signed manifest")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from archiver.app import open_store
    from archiver.core.format import Layout
    from archiver.export import load_identities
    from archiver.verify import VerifyScope, run_verify

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    trusted = _trusted_keys(settings, args.public_key)
    identities = load_identities(args.identity) if args.identity else None
    if args.sample is not None and not 0 < args.sample <= 100:
        raise ConfigError("--sample must be a percentage in (0, 100]")
    scope = VerifyScope(
        pass_id=args.pass_id,
        run_id=args.run,
        since=args.since,
        everything=args.all,
        sample_percent=args.sample,
        deep=args.deep,
        seed=args.seed,
    )
    try:
        report = run_verify(
            open_store(settings),
            Layout(settings.storage.clean_prefix),
            trusted,
            scope,
            require_lock=settings.object_lock.mode is not None,
            identities=identities,
        )
    except StoreError as exc:  # no verdict: exit 3 even when retryable, never 1 (findings)
        print(
            f"idpass-archiver: {exc.reason}: {exc}; the archive was not verified", file=sys.stderr
        )
        return EXIT_SYSTEMIC
    doc = report.to_json()
    structlog.get_logger("archiver.cli").info(
        "verify_finished",
        ok=report.ok,
        passes_checked=report.passes_checked,
        objects_checked=report.objects_checked,
        findings=len(report.findings),
    )
    if args.json:
        _print_json(doc)
    else:
        print(
            f"checked {doc['passes_checked']} passes, {doc['objects_checked']} objects, "
            f"{doc['run_manifests_checked']} run manifests"
            + (f", hashed {doc['bytes_hashed'] / 1e6:.1f} MB" if args.deep else "")
        )
        for f in report.findings:
            print(f"  {f.kind:<20} {f.key}  {f.detail}")
        print("OK: no findings" if report.ok else f"FAILED: {len(report.findings)} findings")
    return EXIT_OK if report.ok else EXIT_INCOMPLETE


def cmd_doctor(args: argparse.Namespace) -> int:
    from archiver.clock import SystemClock
    from archiver.doctor import run_doctor
    from archiver.store.s3 import S3Store

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    with S3Store(settings.storage) as store:
        checks = run_doctor(settings, store, SystemClock())
    ok = all(c.ok for c in checks)
    if args.json:
        _print_json({"ok": ok, "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            print(f"[{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}")
        print("all checks passed" if ok else "some checks FAILED")
    return EXIT_OK if ok else EXIT_INCOMPLETE


def cmd_schedule(args: argparse.Namespace) -> int:
    from archiver.app import run_cycle, run_lock, runtime
    from archiver.scheduler import serve
    from archiver.sources.sync import SourcePool, sync_sources

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)

    def cycle(stop: threading.Event) -> None:
        with run_lock(settings) as exclusive, runtime(settings) as rt, SourcePool(settings) as pool:
            if settings.sources:
                sync_sources(settings, rt.catalog, pool=pool, clock=rt.clock)
            summary = asyncio.run(run_cycle(rt, stop=stop, key_lookup=pool, exclusive=exclusive))
        _report_run(summary, args, settings)

    sched = settings.schedule
    return serve(
        cron=sched.cron,
        timezone=sched.timezone,
        misfire_grace_seconds=sched.misfire_grace_seconds,
        cycle=cycle,
    )


def _report_run(
    summary: RunSummary, args: argparse.Namespace, settings: config_mod.Settings | None = None
) -> None:
    doc = summary.to_json()
    log = structlog.get_logger("archiver.cli")
    log.info(
        "run_finished",
        **{
            k: v
            for k, v in doc.items()
            if k not in ("planned", "failed", "expired_ids", "at_risk_passes", "images")
        },
        # not `images`: the log redactor masks fields of that name (image data)
        image_count=doc["images"],
        failed_count=len(doc["failed"]),
    )
    # Prometheus metrics; a failure is logged, never raised. prometheus_client is
    # imported only when a target is set (17 ms of every run's start-up otherwise).
    if settings is not None and settings.metrics.enabled:
        from archiver.metrics import publish

        publish(summary, settings, command=getattr(args, "command", None))
    if args.json:
        _print_json(doc)
    elif summary.dry_run:
        for item in summary.planned:
            print(
                f"would archive {item['pass_id']} (deadline {item['deadline'] or 'unknown'}) "
                f"under {item['would_write_under']}"
            )
        print(f"{len(summary.planned)} passes due; nothing written (dry run)")


def _read_ids(values: Sequence[str]) -> list[str]:
    ids: list[str] = []
    for v in values:
        if v == "-":
            ids.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            ids.append(v)
    return ids


def cmd_enqueue(args: argparse.Namespace) -> int:
    from archiver.catalog import PassUpsert
    from archiver.sources.file import normalise_pass_id

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    good, bad = [], []
    for n, raw in enumerate(_read_ids(args.pass_ids), start=1):
        try:
            good.append(PassUpsert(pass_id=normalise_pass_id(raw), source="enqueue"))
        except ValueError as exc:
            bad.append({"item": n, "reason": str(exc)})
    stats = _upsert(settings, good)
    structlog.get_logger("archiver.cli").info(
        "enqueued", added=stats.added, unchanged=stats.unchanged, rejected=len(bad)
    )
    return _upsert_report(
        args,
        {"added": stats.added, "updated": stats.updated, "unchanged": stats.unchanged},
        bad,
        f"enqueued: {stats.added} new, {stats.unchanged} already known, {len(bad)} rejected",
        [f"item {b['item']}: {b['reason']}" for b in bad],
    )


def _upsert(settings: config_mod.Settings, records: Sequence[PassUpsert]) -> UpsertStats:
    """Add or update passes in the configured catalog; its UpsertStats."""
    from archiver.app import open_catalog

    catalog = open_catalog(settings)
    try:
        return catalog.upsert(records)
    finally:
        catalog.close()


def _upsert_report(
    args: argparse.Namespace,
    result: dict[str, Any],
    rejected: list[dict[str, Any]],
    headline: str,
    rejected_lines: list[str],
) -> int:
    """Print what an upsert did (JSON, or a line plus one stderr line per rejection)."""
    if args.json:
        _print_json({**result, "rejected": rejected})
    else:
        print(headline)
        for line in rejected_lines:
            print(f"  {line}", file=sys.stderr)
    return EXIT_OK if not rejected else EXIT_INCOMPLETE


def cmd_catalog_rebuild(args: argparse.Namespace) -> int:
    from archiver.app import open_catalog, open_store
    from archiver.clock import SystemClock
    from archiver.core.format import Layout
    from archiver.core.signing import Signer
    from archiver.rebuild import rebuild

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    trusted = []
    if settings.signing.key is not None:
        trusted.append(Signer.from_pem(settings.signing.key.get_secret_value().encode()).verifier)
    catalog = open_catalog(settings)
    try:
        report = rebuild(
            open_store(settings),
            Layout(settings.storage.clean_prefix),
            catalog,
            SystemClock().now(),
            trusted=trusted,
        )
    finally:
        catalog.close()
    structlog.get_logger("archiver.cli").info(
        "catalog_rebuilt",
        manifests=report.manifests,
        recorded=report.recorded,
        rejected=len(report.rejected),
    )
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"rebuilt from {report.manifests} manifests: {report.recorded} passes archived")
        for key, reason in report.rejected:
            print(f"  rejected {key}: {reason}", file=sys.stderr)
    return EXIT_OK if not report.rejected else EXIT_INCOMPLETE


def cmd_catalog(args: argparse.Namespace) -> int:
    if args.catalog_command == "rebuild":
        return cmd_catalog_rebuild(args)
    if args.catalog_command != "import":
        raise ConfigError("usage: idpass-archiver catalog import FILE | catalog rebuild")
    from archiver.sources.file import read_file

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    try:
        good, bad = read_file(args.file, fmt=args.format)
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{args.file} is not UTF-8 text") from None
    stats = _upsert(settings, good)
    structlog.get_logger("archiver.cli").info(
        "catalog_imported",
        added=stats.added,
        updated=stats.updated,
        unchanged=stats.unchanged,
        rejected=len(bad),
    )
    return _upsert_report(
        args,
        {
            "file": str(args.file),
            "added": stats.added,
            "updated": stats.updated,
            "unchanged": stats.unchanged,
        },
        [{"line": b.line, "reason": b.reason} for b in bad],
        f"imported {args.file}: {stats.added} new, {stats.updated} updated, "
        f"{stats.unchanged} unchanged, {len(bad)} rejected",
        [f"line {b.line}: {b.reason}" for b in bad],
    )


def cmd_status(args: argparse.Namespace) -> int:
    from archiver.app import next_run_after, open_catalog
    from archiver.clock import SystemClock, isoformat

    settings = config_mod.load(args.config)
    _setup_logging(settings, args)
    now = SystemClock().now()
    next_run = next_run_after(settings, now)
    catalog = open_catalog(settings)
    try:
        counts = dict(catalog.counts())
        last = catalog.last_run()
        upcoming = catalog.due(now, 10)
        at_risk = catalog.at_risk(now, next_run) if next_run else []
    finally:
        catalog.close()
    next_deadlines = [
        {"pass_id": e.pass_id, "deadline": isoformat(e.deadline) if e.deadline else None}
        for e in upcoming
    ]
    risky = [
        {"pass_id": e.pass_id, "deadline": isoformat(e.deadline)}
        for e in at_risk
        if e.deadline is not None
    ]
    last_doc = None
    if last:
        last_doc = {
            "run_id": last["run_id"],
            "started_at": isoformat(last["started_at"]),
            "finished_at": isoformat(last["finished_at"]),
            "exit_code": last["exit_code"],
            "counts": last["summary"].get("counts"),
            "worker_id": last["summary"].get("worker_id"),
        }
    doc: dict[str, Any] = {
        "counts": counts,
        "next_run": isoformat(next_run) if next_run else None,
        "at_risk": risky,
        "next_deadlines": next_deadlines,
        "last_run": last_doc,
    }
    if args.json:
        _print_json(doc)
        return EXIT_OK
    print("passes by state:")
    for state, n in sorted(counts.items()):
        print(f"  {state:<10} {n}")
    print(f"next scheduled run: {doc['next_run'] or 'none'}")
    print(f"at risk (window closes before the next run): {len(risky)}")
    for risk in risky[:20]:
        print(f"  {risk['pass_id']}  deadline {risk['deadline']}")
    print("next due:")
    for item in next_deadlines:
        print(f"  {item['pass_id']}  deadline {item['deadline'] or 'unknown'}")
    if last_doc:
        print(
            f"last run: {last_doc['run_id']} exit {last_doc['exit_code']} "
            f"finished {last_doc['finished_at']}"
        )
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from archiver import report
    from archiver.app import open_catalog
    from archiver.clock import SystemClock
    from archiver.logging import configure

    settings = config_mod.load(args.config)
    # The report may own stdout: logs go to stderr.
    configure(settings.logging.level, settings.logging.format, sys.stderr)
    catalog = open_catalog(settings)
    try:
        coverage = catalog.coverage(args.since, SystemClock().now())
    finally:
        catalog.close()
    render = {
        "table": report.render_table,
        "json": report.render_json,
        "html": report.render_html,
    }[args.format]
    text = render(coverage)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {args.output} ({exc.strerror})") from None
    structlog.get_logger("archiver.cli").info(
        "report_written",
        format=args.format,
        output=str(args.output) if args.output else "stdout",
        known=coverage.known,
        days=len(coverage.days),
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from archiver.demo import run_demo

    return run_demo(workdir=args.workdir, as_json=args.json, serve=args.serve)


COMMANDS = {
    "run": cmd_run,
    "export": cmd_export,
    "doctor": cmd_doctor,
    "verify": cmd_verify,
    "sync": cmd_sync,
    "backfill": cmd_backfill,
    "schedule": cmd_schedule,
    "enqueue": cmd_enqueue,
    "catalog": cmd_catalog,
    "status": cmd_status,
    "report": cmd_report,
    "demo": cmd_demo,
}


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas, as ``MALLOC_ARENA_MAX`` would (unless that is set).

    glibc gives each thread that allocates its own arena, and an arena keeps the pages
    of freed buffers for reuse: with 16 upload threads each handling multi-MB images,
    the process kept hundreds of MB it no longer used (peak RSS grew with the number
    of passes). Two arenas made it flat, at no measurable CPU cost
    (``python -m tests.benchmarks.bench_pipeline``). Not glibc: nothing to do.
    """
    if sys.platform != "linux" or "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


_M_ARENA_MAX = -8  # from glibc's malloc.h


def settle_gc() -> None:
    """Turn the garbage collector back on if the entry point paused it for start-up
    (:func:`archiver.__main__.main`), first moving everything alive now out of its
    reach (``gc.freeze``): modules and classes live as long as the process. A no-op
    when the collector is on (the CLI called from Python, as in the tests)."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    limit_malloc_arenas()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "run":
        settle_gc()  # `run` settles once it is set up (cmd_run)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"idpass-archiver: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AlreadyRunning as exc:
        print(f"idpass-archiver: {exc}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING
    except ArchiverError as exc:
        print(f"idpass-archiver: {exc.reason}: {exc}", file=sys.stderr)
        return EXIT_SYSTEMIC if exc.systemic else EXIT_INCOMPLETE
    except KeyboardInterrupt:
        print("idpass-archiver: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `status | head`: the reader went away
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # a bug: one line with where, never values or a traceback
        print(
            f"idpass-archiver: internal error {type(exc).__name__} at {errors.where(exc)}; "
            "please report it",
            file=sys.stderr,
        )
        return EXIT_SYSTEMIC
