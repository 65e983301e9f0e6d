"""The command line: a thin shell that parses, configures, calls, and sets the exit code.

Every command starts from a :class:`CommandContext` (settings, logging, the catalog and
the store opened on first use, everything closed at the end); ``run``, ``backfill`` and
each tick of ``schedule`` are one function, :func:`_archive`. A run's exit code is its
summary's (:attr:`archiver.results.RunSummary.exit_code`).

Exit codes (README, "Exit codes"):
  0  all due work done
  1  some passes failed or are waiting to retry (or a source failed to sync, or the
     run stopped early)
  2  usage or configuration error
  3  systemic failure (API auth, storage unreachable or refusing, catalog)
  4  passes expired without being archived (compliance alarm)
  5  another run holds the (SQLite) catalog lock; this one did nothing
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack, closing
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
    from archiver.app import Runtime
    from archiver.catalog import Scope
    from archiver.catalog.sql import SqlCatalog
    from archiver.progress import Progress
    from archiver.store.s3 import S3Store

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
        "and the run-manifest hash chain, delete markers, and that the passes in the bucket "
        "and those the signed run manifests list are the same. Needs read access and the "
        "public key only; with the signing key configured, a clean check stores a signed "
        "checkpoint. Exit 0 when clean, 1 on any finding.",
    )
    _add_config(ver)
    what = ver.add_mutually_exclusive_group()
    what.add_argument("--pass", dest="pass_id", metavar="ID")
    what.add_argument("--run", metavar="RUN_ID")
    what.add_argument("--since", type=_day, metavar="DATE", help="runs started since DATE")
    what.add_argument("--all", action="store_true", help="the whole archive (the default)")
    what.add_argument(
        "--since-checkpoint",
        action="store_true",
        help="only what is new since the newest signed checkpoint (the whole archive "
        "if there is none)",
    )
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


class CommandContext:
    """What every command works with: its arguments, the settings loaded from
    ``--config``, logging configured, and the catalog and the store, each opened the
    first time a command asks for it and closed when the command ends::

        with CommandContext(args) as ctx:
            ctx.catalog.counts()

    Logs go to stdout, or to stderr when ``--json`` (or ``logs_to_stderr``, for a
    command whose output may own stdout) leaves stdout to the result. A
    configuration, catalog or store error propagates as the ArchiverError it is, and
    :func:`main` turns it into its exit code.
    """

    def __init__(self, args: argparse.Namespace, *, logs_to_stderr: bool = False) -> None:
        from archiver.clock import SystemClock
        from archiver.logging import configure

        self.args = args
        self.settings = config_mod.load(args.config)
        to_stderr = logs_to_stderr or getattr(args, "json", False)
        configure(
            self.settings.logging.level,
            self.settings.logging.format,
            sys.stderr if to_stderr else sys.stdout,
        )
        self.log = structlog.get_logger("archiver.cli")
        self.clock = SystemClock()
        self._closing = ExitStack()
        self._catalog: SqlCatalog | None = None
        self._store: S3Store | None = None

    @property
    def catalog(self) -> SqlCatalog:
        """The configured catalog, opened on first use."""
        if self._catalog is None:
            from archiver.app import open_catalog

            self._catalog = self._closing.enter_context(closing(open_catalog(self.settings)))
        return self._catalog

    @property
    def store(self) -> S3Store:
        """The configured archive store, opened on first use."""
        if self._store is None:
            from archiver.app import open_store

            self._store = self._closing.enter_context(open_store(self.settings))
        return self._store

    def runtime(self) -> Runtime:
        """What a cycle runs against: the settings, the catalog, the store, the clock."""
        from archiver.app import Runtime

        return Runtime(self.settings, self.catalog, self.store, self.clock)

    def close(self) -> None:
        """Close whatever was opened (the store, then the catalog)."""
        self._closing.close()

    def __enter__(self) -> CommandContext:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _archive(
    ctx: CommandContext,
    *,
    sync: bool,
    dry_run: bool = False,
    prepare: Callable[[Runtime], Progress] | None = None,
    **run: Any,
) -> RunSummary:
    """The one archival cycle behind ``run``, ``backfill`` and each tick of ``schedule``.

    Take the run lock; sync the configured sources (when ``sync``); then, with
    ``prepare(runtime)`` (if given) making the progress that watches each pass, run
    the pipeline (:func:`archiver.app.run_cycle`, with ``run``: ``limit``,
    ``pass_ids``, ``scope``, ``requests_per_second``, ``stop``), which stores the
    signed run manifest and records the run in the catalog, both with the sources'
    reports in the summary; last, log the summary and publish the metrics. The
    returned summary's :attr:`~archiver.results.RunSummary.exit_code` is the
    command's.

    A systemic failure before the cycle (the catalog or the store cannot be opened:
    :func:`archiver.app.stops_run`) still gives a summary, with ``systemic_error``
    set, recorded in the catalog if it can be, logged and published like any run's:
    the alert on systemic failures sees it.
    """
    from archiver.app import aborted_run, stops_run

    try:
        summary = _locked_cycle(ctx, sync=sync, dry_run=dry_run, prepare=prepare, **run)
    except ArchiverError as exc:
        if not stops_run(exc):
            raise
        summary = aborted_run(ctx.settings, ctx.clock, exc, dry_run=dry_run)
        if not dry_run:
            _record_aborted(ctx, summary)
    _publish_run(ctx, summary)
    return summary


def _locked_cycle(
    ctx: CommandContext,
    *,
    sync: bool,
    dry_run: bool,
    prepare: Callable[[Runtime], Progress] | None,
    **run: Any,
) -> RunSummary:
    """Under the run lock: the source sync, the progress, the cycle (see :func:`_archive`)."""
    from archiver.app import run_cycle_sync, run_lock
    from archiver.sources.sync import SourcePool, sync_sources

    settings = ctx.settings
    with run_lock(settings) as exclusive, SourcePool(settings) as pool:
        rt = ctx.runtime()
        settle_gc()
        reports = []
        if sync and settings.sources:
            reports = sync_sources(settings, rt.catalog, pool=pool, clock=rt.clock)
        progress = prepare(rt) if prepare is not None else None
        try:
            return run_cycle_sync(
                rt,
                dry_run=dry_run,
                on_result=progress,
                key_lookup=pool,
                exclusive=exclusive,
                sources=reports,
                **run,
            )
        finally:
            if progress is not None:
                progress.close()


def _record_aborted(ctx: CommandContext, summary: RunSummary) -> None:
    """Enter a run stopped before its cycle in the catalog, if the catalog can be
    opened (no run manifest: the cycle never had a store to put it in)."""
    assert summary.finished_at is not None
    try:
        ctx.catalog.record_run(
            summary.run_id,
            summary.started_at,
            summary.finished_at,
            summary.exit_code,
            summary.to_json(),
            worker_id=summary.worker_id,
        )
    except ArchiverError as exc:
        ctx.log.error("run_not_recorded", run_id=summary.run_id, reason=exc.reason, error=str(exc))


def _publish_run(ctx: CommandContext, summary: RunSummary) -> None:
    """Log the finished run, and publish its metrics (when ``[metrics]`` has a target)."""
    doc = summary.to_json()
    ctx.log.info(
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
    if ctx.settings.metrics.enabled:
        from archiver.metrics import publish

        publish(summary, ctx.settings, command=getattr(ctx.args, "command", None))


def _print_run(summary: RunSummary, args: argparse.Namespace) -> None:
    """The summary as JSON (``--json``), or a dry run's plan; a real run prints nothing
    else (its log says what it did), except a systemic failure's one line on stderr,
    as every command's error (:func:`main`)."""
    if summary.systemic_error:
        print(f"idpass-archiver: {summary.systemic_error}", file=sys.stderr)
    if args.json:
        _print_json(summary.to_json())
    elif summary.dry_run:
        for item in summary.planned:
            print(
                f"would archive {item['pass_id']} (deadline {item['deadline'] or 'unknown'}) "
                f"under {item['would_write_under']}"
            )
        print(f"{len(summary.planned)} passes due; nothing written (dry run)")


def _pass_ids(values: Sequence[str] | None) -> list[str] | None:
    """``--pass`` ids, normalised; a bad one is a usage error."""
    from archiver.sources.file import normalise_pass_id

    if not values:
        return None
    try:
        return [normalise_pass_id(p) for p in values]
    except ValueError as exc:
        raise ConfigError(f"--pass: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    with CommandContext(args) as ctx:
        if args.limit is not None and args.limit < 1:
            raise ConfigError("--limit must be at least 1")
        summary = _archive(
            ctx,
            sync=not args.dry_run and not args.no_sync,
            limit=args.limit,
            pass_ids=_pass_ids(args.pass_ids),
            dry_run=args.dry_run,
        )
    _print_run(summary, args)
    return summary.exit_code


def cmd_sync(args: argparse.Namespace) -> int:
    from archiver.sources.sync import SourcePool, sync_sources

    with CommandContext(args) as ctx:
        if not ctx.settings.sources:
            raise ConfigError("no [[sources]] are configured", key="sources")
        with SourcePool(ctx.settings) as pool:
            reports = sync_sources(ctx.settings, ctx.catalog, only=args.source, pool=pool)
    docs = [r.to_json() for r in reports]
    if args.json:
        _print_json({"sources": docs})
    else:
        _print_sync(docs)
    ok = all(r.ok and not doc["rejected"] for r, doc in zip(reports, docs, strict=True))
    return EXIT_OK if ok else EXIT_INCOMPLETE


def _print_sync(docs: Sequence[dict[str, Any]]) -> None:
    """One line per source on stdout, one per rejected row on stderr."""
    for doc in docs:
        print(
            f"{doc['name']} ({doc['kind']}): read {doc['read']}, {doc['added']} new, "
            f"{doc['updated']} updated, {doc['unchanged']} unchanged, "
            f"{doc['rejected']} rejected, watermark {doc.get('watermark_after') or '-'}"
            + (f", FAILED: {doc['error']}" if doc.get("error") else "")
        )
        for rej in doc.get("rejections", []):
            print(f"  {doc['name']} row {rej['row']}: {rej['reason']}", file=sys.stderr)


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
    from archiver.catalog import PassUpsert
    from archiver.progress import Progress

    with CommandContext(args) as ctx:
        scope = _backfill_scope(args, ctx.clock.now())
        ids = scope.pass_ids

        def prepare(rt: Runtime) -> Progress:
            """Enqueue the listed ids, and count the work (under the run lock)."""
            if ids:
                rt.catalog.upsert(PassUpsert(pass_id=pid, source="backfill") for pid in ids)
            total = rt.catalog.count_due(rt.clock.now(), scope)
            ctx.log.info("backfill_started", total=total)
            return Progress(total)

        summary = _archive(
            ctx,
            sync=False,
            scope=scope,
            dry_run=args.dry_run,
            limit=args.limit,
            requests_per_second=args.rate,
            prepare=prepare,
        )
    _print_run(summary, args)
    return summary.exit_code


def _backfill_scope(args: argparse.Namespace, now: datetime) -> Scope:
    """What ``backfill`` archives: the date range, or the ids in ``--ids-file``."""
    from archiver.catalog import Scope

    if args.ids_file is None and (args.completed_from is None or args.completed_to is None):
        raise ConfigError("backfill needs --completed-from and --completed-to, or --ids-file")
    if args.rate is not None and args.rate <= 0:
        raise ConfigError("--rate must be positive (requests per second)")
    return Scope(
        completed_from=args.completed_from,
        completed_to=args.completed_to,
        pass_ids=_read_ids_file(args.ids_file) if args.ids_file is not None else None,
        waive_backoff_before=now,
    )


def _read_ids_file(path: Path) -> tuple[str, ...]:
    """The distinct pass ids of a file, one per line; bad lines are reported on stderr."""
    from archiver.sources.file import normalise_pass_id

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror})") from None
    parsed, bad = [], []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed.append(normalise_pass_id(line))
        except ValueError as exc:
            bad.append(f"line {n}: {exc}")
    for b in bad:
        print(f"  {path}: {b}", file=sys.stderr)
    return tuple(dict.fromkeys(parsed))


def _trusted_keys(settings: config_mod.Settings, extra: Sequence[str]) -> list[Any]:
    """The public keys to trust: given files, signing.public_key_files, and the
    configured signing key's own."""
    from archiver.core.signing import Signer, SigningKeyError, Verifier, read_public_keys

    trusted: list[Verifier] = read_public_keys([*extra, *settings.signing.public_key_files])
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
    from archiver.core.format import Layout
    from archiver.export import export_pass, load_identities
    from archiver.sources.file import normalise_pass_id

    with CommandContext(args) as ctx:
        try:
            pid = normalise_pass_id(args.pass_id)
        except ValueError as exc:
            raise ConfigError(f"--pass: {exc}") from None
        identities = load_identities(args.identity) if args.identity else []
        files = export_pass(
            ctx.store,
            Layout(ctx.settings.storage.clean_prefix),
            pid,
            _trusted_keys(ctx.settings, args.public_key),
            identities,
            args.to,
        )
    for f in files:
        print(f)
    print(f"exported {len(files)} files of pass {pid}, each checked against its signed manifest")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from archiver.core.format import Layout
    from archiver.export import load_identities
    from archiver.verify import VerifyScope, run_verify

    with CommandContext(args) as ctx:
        trusted = _trusted_keys(ctx.settings, args.public_key)
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
            since_checkpoint=args.since_checkpoint,
        )
        layout = Layout(ctx.settings.storage.clean_prefix)
        try:
            report = run_verify(
                ctx.store,
                layout,
                trusted,
                scope,
                require_lock=ctx.settings.object_lock.mode is not None,
                identities=identities,
            )
            _record_checkpoint(ctx, layout, scope, report)
        except StoreError as exc:  # no verdict: exit 3 even when retryable, never 1
            print(
                f"idpass-archiver: {exc.reason}: {exc}; the archive was not verified",
                file=sys.stderr,
            )
            return EXIT_SYSTEMIC
        ctx.log.info(
            "verify_finished",
            ok=report.ok,
            passes_checked=report.passes_checked,
            objects_checked=report.objects_checked,
            findings=len(report.findings),
        )
    doc = report.to_json()
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


def _record_checkpoint(ctx: CommandContext, layout: Any, scope: Any, report: Any) -> None:
    """A clean check of the whole archive, or from a checkpoint, with the signing key
    configured: store a signed checkpoint the next ``--since-checkpoint`` starts from."""
    from archiver import checkpoint
    from archiver.app import load_signer, object_lock

    whole = scope.everything or not (scope.pass_id or scope.run_id or scope.since)
    if not report.ok or scope.sample_percent is not None or not whole:
        return
    if ctx.settings.signing.key is None:
        return
    report.checkpoint = checkpoint.record(
        ctx.store,
        layout,
        load_signer(ctx.settings),
        object_lock(ctx.settings, ctx.clock),
        report,
        scope="since_checkpoint" if report.started_from else "all",
        now=ctx.clock.now(),
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    from archiver.doctor import run_doctor

    with CommandContext(args) as ctx:
        checks = run_doctor(ctx.settings, ctx.store, ctx.clock)
    ok = all(c.ok for c in checks)
    if args.json:
        _print_json({"ok": ok, "checks": [c.to_json() for c in checks]})
    else:
        for c in checks:
            print(f"[{c.label}] {c.name}: {c.detail}")
        print("all checks passed" if ok else "some checks FAILED")
    return EXIT_OK if ok else EXIT_INCOMPLETE


def cmd_schedule(args: argparse.Namespace) -> int:
    """Every tick runs :func:`_archive` as ``run`` would (sources synced first), with
    the process's catalog and store, open until it stops."""
    from archiver.scheduler import serve

    with CommandContext(args) as ctx:
        sched = ctx.settings.schedule
        return serve(
            cron=sched.cron,
            timezone=sched.timezone,
            misfire_grace_seconds=sched.misfire_grace_seconds,
            cycle=lambda stop: _archive(ctx, sync=True, stop=stop),
        )


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

    with CommandContext(args) as ctx:
        good, bad = [], []
        for n, raw in enumerate(_read_ids(args.pass_ids), start=1):
            try:
                good.append(PassUpsert(pass_id=normalise_pass_id(raw), source="enqueue"))
            except ValueError as exc:
                bad.append({"item": n, "reason": str(exc)})
        stats = ctx.catalog.upsert(good)
        ctx.log.info("enqueued", added=stats.added, unchanged=stats.unchanged, rejected=len(bad))
    return _upsert_report(
        args,
        {"added": stats.added, "updated": stats.updated, "unchanged": stats.unchanged},
        bad,
        f"enqueued: {stats.added} new, {stats.unchanged} already known, {len(bad)} rejected",
        [f"item {b['item']}: {b['reason']}" for b in bad],
    )


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
    from archiver.core.format import Layout
    from archiver.rebuild import rebuild

    with CommandContext(args) as ctx:
        signing = ctx.settings.signing
        # only configured keys: never the bucket's copy under keys/
        trusted = _trusted_keys(ctx.settings, []) if signing.key or signing.public_key_files else []
        catalog = ctx.catalog
        report = rebuild(
            ctx.store,
            Layout(ctx.settings.storage.clean_prefix),
            catalog,
            ctx.clock.now(),
            trusted=trusted,
        )
        ctx.log.info(
            "catalog_rebuilt",
            manifests=report.manifests,
            recorded=report.recorded,
            rejected=len(report.rejected),
        )
    if args.json:
        _print_json(report.to_json())
    else:
        print(f"rebuilt from {report.manifests} manifests: {report.recorded} passes archived")
        for key_, reason in report.rejected:
            print(f"  rejected {key_}: {reason}", file=sys.stderr)
    return EXIT_OK if not report.rejected else EXIT_INCOMPLETE


def cmd_catalog(args: argparse.Namespace) -> int:
    if args.catalog_command == "rebuild":
        return cmd_catalog_rebuild(args)
    if args.catalog_command != "import":
        raise ConfigError("usage: idpass-archiver catalog import FILE | catalog rebuild")
    from archiver.sources.file import read_file

    with CommandContext(args) as ctx:
        try:
            good, bad = read_file(args.file, fmt=args.format)
        except OSError as exc:
            raise ConfigError(f"cannot read {args.file} ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{args.file} is not UTF-8 text") from None
        stats = ctx.catalog.upsert(good)
        ctx.log.info(
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
    with CommandContext(args) as ctx:
        doc = _status(ctx)
    if args.json:
        _print_json(doc)
    else:
        _print_status(doc)
    return EXIT_OK


def _status(ctx: CommandContext) -> dict[str, Any]:
    """Counts per state, the next run, the passes at risk before it, the next
    deadlines and the last run, as ``status --json`` prints them."""
    from archiver.app import next_run_after
    from archiver.clock import isoformat

    now = ctx.clock.now()
    next_run = next_run_after(ctx.settings, now)
    catalog = ctx.catalog
    last = catalog.last_run()
    at_risk = catalog.at_risk(now, next_run) if next_run else []
    return {
        "counts": dict(catalog.counts()),
        "next_run": isoformat(next_run) if next_run else None,
        "at_risk": [
            {"pass_id": e.pass_id, "deadline": isoformat(e.deadline)}
            for e in at_risk
            if e.deadline is not None
        ],
        "next_deadlines": [
            {"pass_id": e.pass_id, "deadline": isoformat(e.deadline) if e.deadline else None}
            for e in catalog.due(now, 10)
        ],
        "last_run": _last_run(last) if last else None,
    }


def _last_run(last: dict[str, Any]) -> dict[str, Any]:
    from archiver.clock import isoformat

    return {
        "run_id": last["run_id"],
        "started_at": isoformat(last["started_at"]),
        "finished_at": isoformat(last["finished_at"]),
        "exit_code": last["exit_code"],
        "counts": last["summary"].get("counts"),
        "worker_id": last["summary"].get("worker_id"),
    }


def _print_status(doc: dict[str, Any]) -> None:
    print("passes by state:")
    for state, n in sorted(doc["counts"].items()):
        print(f"  {state:<13} {n}")  # images_absent, counted apart from no_images
    print(f"next scheduled run: {doc['next_run'] or 'none'}")
    print(f"at risk (window closes before the next run): {len(doc['at_risk'])}")
    for risk in doc["at_risk"][:20]:
        print(f"  {risk['pass_id']}  deadline {risk['deadline']}")
    print("next due:")
    for item in doc["next_deadlines"]:
        print(f"  {item['pass_id']}  deadline {item['deadline'] or 'unknown'}")
    last = doc["last_run"]
    if last:
        print(f"last run: {last['run_id']} exit {last['exit_code']} finished {last['finished_at']}")


def cmd_report(args: argparse.Namespace) -> int:
    from archiver import report

    # The report may own stdout: logs go to stderr.
    with CommandContext(args, logs_to_stderr=True) as ctx:
        coverage = ctx.catalog.coverage(args.since, ctx.clock.now())
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
        ctx.log.info(
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
