"""Wiring: turn settings into the boundaries and a pipeline. The CLI and the demo use it."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from archiver import __version__
from archiver.catalog import Scope, UnlistedPass
from archiver.catalog.keys import KeySealer
from archiver.catalog.sql import SqlCatalog
from archiver.clock import Clock, SystemClock
from archiver.config import ApiSettings, Settings, warn_insecure_transport
from archiver.core.format import (
    JSON_TYPE,
    OCTET_TYPE,
    ChainLink,
    Layout,
    RunManifest,
    chain_link_of,
    signature_key,
)
from archiver.core.images import sha256_hex
from archiver.core.runlog import (
    RECOVERED_PER_RUN,
    build_run_manifest,
    listed_by,
    run_manifest_bytes,
)
from archiver.core.signing import Signer, SigningKeyError, Verifier, read_public_keys
from archiver.errors import (
    AlreadyRunning,
    ArchiverError,
    CatalogError,
    ConfigError,
    FormatError,
    ObjectConflict,
    ObjectNotFound,
    PublicKeyConflict,
    StoreError,
)
from archiver.idpass.client import IdPassClient
from archiver.pipeline import DetailsReader, Pipeline, PipelineOptions, new_run_id
from archiver.ratelimit import AsyncRateLimiter, RateLimitedReader
from archiver.results import PassResult, RunSummary
from archiver.retry import RetryingReader
from archiver.scheduler import make_trigger
from archiver.store import ObjectInfo, ObjectLock, ObjectStore
from archiver.store.guard import ReachabilityGuard

if TYPE_CHECKING:
    from archiver.sources.sync import SourceReport
    from archiver.store.s3 import S3Store


def open_catalog(settings: Settings) -> SqlCatalog:
    key = settings.catalog.key
    sealer = KeySealer(key.get_secret_value()) if key is not None else None
    return SqlCatalog(settings.catalog.url, sealer=sealer)


def open_store(settings: Settings, credentials: tuple[str, str] | None = None) -> S3Store:
    """The configured S3 store; the caller closes it (``close()``, or ``with``)."""
    from archiver.store.s3 import S3Store

    return S3Store(settings.storage, credentials=credentials)


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}"


def pipeline_options(settings: Settings) -> PipelineOptions:
    p = settings.pipeline
    return PipelineOptions(
        lock_mode=settings.object_lock.mode,
        lock_retain_days=settings.object_lock.retain_days,
        concurrency=p.concurrency,
        max_puts=settings.storage.upload_threads,
        max_image_bytes=p.max_image_bytes,
        archive_statuses=p.archive_statuses,
        decryption=p.decryption,
        max_attempts=p.max_attempts,
        retry_base=timedelta(seconds=p.retry_base_seconds),
        retry_cap=timedelta(seconds=p.retry_cap_seconds),
        not_ready_recheck=timedelta(seconds=p.not_ready_recheck_seconds),
        not_ready_margin=timedelta(hours=p.not_ready_margin_hours),
        confirm_reads=p.confirm_reads,
        confirm_spacing=timedelta(seconds=p.confirm_spacing_seconds),
        confirm_wait=timedelta(seconds=p.confirm_wait_seconds),
        confirm_margin=timedelta(seconds=p.confirm_margin_seconds),
        sse=settings.storage.sse,
        kms_key_id=settings.storage.kms_key_id,
        worker_id=settings.catalog.worker_id or default_worker_id(),
        lease_seconds=settings.catalog.lease_seconds,
    )


@dataclass
class Runtime:
    """What a cycle runs against: the settings, the open catalog and store, a clock."""

    settings: Settings
    catalog: SqlCatalog
    store: ObjectStore
    clock: Clock


@contextmanager
def runtime(
    settings: Settings,
    *,
    credentials: tuple[str, str] | None = None,
    clock: Clock | None = None,
) -> Iterator[Runtime]:
    """The configured catalog and store, open for the ``with`` block and closed after
    it. (The CLI opens them through its command context instead.)"""
    catalog = open_catalog(settings)
    try:
        with open_store(settings, credentials) as store:
            yield Runtime(settings, catalog, store, clock or SystemClock())
    finally:
        catalog.close()


def next_run_after(settings: Settings, now: datetime) -> datetime | None:
    """When the configured schedule next fires after ``now`` (UTC)."""
    trigger = make_trigger(settings.schedule.cron, settings.schedule.timezone)
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire.astimezone(UTC) if fire is not None else None


@contextmanager
def run_lock(settings: Settings) -> Iterator[bool]:
    """On an SQLite catalog only one run may go at a time: hold an exclusive lock on a
    file beside the database, and yield True (this process is the only worker).
    PostgreSQL catalogs share work through leases instead: yield False."""
    url = sa.make_url(settings.catalog.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield False
        return
    path = Path(url.database + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a read-only or unwritable directory, a file in the way
        raise _lock_error(path, exc) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(
                f"another run holds the catalog lock ({path}); this run does nothing and exits"
            ) from None
        except OSError as exc:  # a file system without locks
            raise _lock_error(path, exc) from None
        yield True
    finally:
        os.close(fd)


def _lock_error(path: Path, exc: OSError) -> CatalogError:
    """The run lock could not be taken: name the directory and the system's reason."""
    # mkdir(exist_ok=True) says "File exists" for a file where the directory should be
    reason = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
    reason = reason or type(exc).__name__
    return CatalogError(
        f"cannot take the run lock {path.name} in the catalog's directory {path.parent} "
        f"({reason}): the directory must exist, or be creatable, and be writable"
    )


async def run_cycle(
    rt: Runtime,
    *,
    limit: int | None = None,
    pass_ids: Sequence[str] | None = None,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    requests_per_second: float | None = None,
    on_result: Callable[[PassResult], None] | None = None,
    scope: Scope | None = None,
    key_lookup: Callable[[str, str], str | None] | None = None,
    exclusive: bool = False,
    sources: Sequence[SourceReport] = (),
) -> RunSummary:
    """One archival cycle against the configured API and bucket, recorded: unless a
    dry run, the signed run manifest is stored and the run entered in the catalog.

    ``sources`` are the reports of the source sync that preceded the cycle; they are
    part of the summary before it is recorded, so the exit code in the run manifest
    and the catalog is the run's (:attr:`RunSummary.exit_code`).

    A systemic failure (:func:`stops_run`), at the start (the store unreachable or
    refusing the public key's put) or during the passes (the API refusing the token,
    the store judged unreachable by :class:`~archiver.store.guard.ReachabilityGuard`),
    ends the run with ``systemic_error`` set, and the run is recorded as far as the
    store and the catalog allow: the caller always gets a summary (exit code 3).
    A configuration error (no token, no signing key) is raised as it is.

    SIGTERM/SIGINT (when called from the main thread) or ``stop`` being set: no new
    passes start, those in flight get ``schedule.stop_grace_seconds`` to finish, and
    the run is recorded as stopped early.
    """
    s = rt.settings
    api_settings = s.require_api()
    if api_settings.token is None and not dry_run:
        raise ConfigError(
            "no API token: set IDPASS_ARCHIVER_API_TOKEN or api.token_file", key="api.token"
        )
    signer = load_signer(s)
    trusted_verifiers(s, signer)  # an unreadable public_key_files entry: a usage error, now
    layout = Layout(s.storage.clean_prefix)
    # The public key, put first, is the object the guard asks about.
    guard = ReachabilityGuard(rt.store, probe_key=layout.public_key(signer.key_id))
    rt = dataclasses.replace(rt, store=guard)
    run_id, started = new_run_id(rt.clock.now()), rt.clock.now()
    try:
        _prepare(rt, api_settings, signer, dry_run=dry_run, exclusive=exclusive)
        summary = await _cycle(
            rt,
            api_settings,
            signer,
            stop or threading.Event(),
            requests_per_second=requests_per_second,
            on_result=on_result,
            key_lookup=key_lookup,
            run={
                "limit": limit,
                "pass_ids": pass_ids,
                "dry_run": dry_run,
                "scope": scope,
                "run_id": run_id,
            },
        )
    except ArchiverError as exc:
        if not stops_run(exc):
            raise
        summary = aborted_run(s, rt.clock, exc, run_id=run_id, started_at=started, dry_run=dry_run)
    summary.sources = [r.to_json() for r in sources]
    if not dry_run:
        _record(rt, signer, summary)
    return summary


def stops_run(exc: ArchiverError) -> bool:
    """Whether ``exc`` ends a run as a systemic failure (exit 3, the run recorded):
    a systemic error, or any store error outside a pass (before the passes start,
    nothing could be archived). A configuration error is not: it is a usage error
    (exit 2), raised as it is."""
    return not isinstance(exc, ConfigError) and (exc.systemic or isinstance(exc, StoreError))


def aborted_run(
    settings: Settings,
    clock: Clock,
    exc: ArchiverError,
    *,
    run_id: str | None = None,
    started_at: datetime | None = None,
    dry_run: bool = False,
) -> RunSummary:
    """The summary of a run that ``exc`` stopped before its pipeline could give one:
    no pass handled, ``systemic_error`` set (exit code 3)."""
    now = clock.now()
    summary = RunSummary(
        run_id=run_id or new_run_id(now),
        started_at=started_at or now,
        finished_at=now,
        systemic_error=f"{exc.reason}: {exc}",
        dry_run=dry_run,
        worker_id=settings.catalog.worker_id or default_worker_id(),
        next_run=next_run_after(settings, now),
    )
    log = structlog.get_logger("archiver.app")
    log.error("run_aborted", run_id=summary.run_id, reason=exc.reason, error=str(exc))
    return summary


async def _cycle(
    rt: Runtime,
    api_settings: ApiSettings,
    signer: Signer,
    stop: threading.Event,
    *,
    requests_per_second: float | None,
    on_result: Callable[[PassResult], None] | None,
    key_lookup: Callable[[str, str], str | None] | None,
    run: dict[str, Any],
) -> RunSummary:
    """The pipeline over the due passes, with the API client and the upload threads;
    ``run`` are :meth:`Pipeline.run`'s arguments."""
    s = rt.settings
    options = dataclasses.replace(
        pipeline_options(s),
        next_run=next_run_after(s, rt.clock.now()),
        requests=api_settings.concurrency,  # as many as the client has connections
    )
    rate = api_settings.requests_per_second if requests_per_second is None else requests_per_second
    token = api_settings.token
    with (
        _stop_on_signals(asyncio.get_running_loop(), stop),
        ThreadPoolExecutor(
            max_workers=s.storage.upload_threads, thread_name_prefix="archiver-io"
        ) as executor,
    ):
        async with IdPassClient(
            api_settings.base_url,
            token.get_secret_value() if token else "",
            connect_timeout=api_settings.connect_timeout_seconds,
            read_timeout=api_settings.read_timeout_seconds,
            request_deadline=api_settings.request_deadline_seconds,
            max_response_bytes=api_settings.max_response_bytes,
            max_connections=api_settings.concurrency,
            verify_tls=api_settings.verify_tls,
            max_slots=api_settings.max_image_slots,
            max_record_bytes=api_settings.max_record_bytes,
            clock=rt.clock,
            clock_skew_warn_seconds=api_settings.clock_skew_warn_seconds,
        ) as client:
            pipeline = Pipeline(
                api=_reader(client, api_settings, rate),
                store=rt.store,
                catalog=rt.catalog,
                layout=Layout(s.storage.clean_prefix),
                options=options,
                clock=rt.clock,
                executor=executor,
                signer=signer,
                trusted=trusted_verifiers(s, signer),
                age_recipients=age_recipients(s),
                key_lookup=key_lookup,
                on_result=on_result,
            )
            return await _run_until_stopped(pipeline, stop, s.schedule.stop_grace_seconds, **run)


def _prepare(
    rt: Runtime, api: ApiSettings, signer: Signer, *, dry_run: bool, exclusive: bool
) -> None:
    """Checks and chores before a cycle."""
    s = rt.settings
    log = structlog.get_logger("archiver.app")
    for section, verify in (("api", api.verify_tls), ("storage", s.storage.verify_tls)):
        if not verify:
            log.warning(
                "tls_verification_off",
                setting=f"{section}.verify_tls",
                note="certificates are not checked: for test beds only",
            )
    warn_insecure_transport(s)
    if dry_run:
        return
    if exclusive:
        # We hold the SQLite run lock: any lease left is from a run that died.
        released = rt.catalog.release_all_leases()
        if released:
            log.warning("stale_leases_released", count=released)
    publish_public_key(rt.store, Layout(s.storage.clean_prefix), signer, object_lock(s, rt.clock))


@contextmanager
def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while the block runs (from the main thread only:
    elsewhere, as in ``schedule``'s cycles, the caller owns the signals)."""
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        yield
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


def _reader(client: IdPassClient, api: ApiSettings, rate: float | None) -> DetailsReader:
    """The client as the pipeline reads it: rate-limited (when ``rate``), retrying."""
    reader: DetailsReader = client
    if rate:
        reader = RateLimitedReader(reader, AsyncRateLimiter(rate))
    return RetryingReader(
        reader,
        attempts=api.max_attempts,
        base=api.retry_base_seconds,
        max_wait=api.retry_max_wait_seconds,
    )


async def _run_until_stopped(
    pipeline: Pipeline, stop: threading.Event, grace: float, **run: Any
) -> RunSummary:
    """``pipeline.run(**run)``, asked to stop (with ``grace``) once ``stop`` is set."""

    async def watch() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.1)
        pipeline.request_stop(grace=grace)

    watcher = asyncio.create_task(watch())
    try:
        summary: RunSummary = await pipeline.run(**run)
    finally:
        watcher.cancel()
    return summary


def _record(rt: Runtime, signer: Signer, summary: RunSummary) -> None:
    """Store the signed run manifest, then enter the run in the catalog. Either may
    be impossible (the store or the catalog down): that is logged and said in
    ``systemic_error``, and the other is still done; nothing is raised."""
    assert summary.finished_at is not None
    key = digest = None
    recovered = _unlisted(rt.catalog, summary)
    try:
        key, digest = write_run_manifest(rt, signer, summary, recovered)
    except ArchiverError as exc:
        _not_kept(summary, "run_manifest_not_stored", "the run manifest was not stored", exc)
    else:
        _mark_listed(rt.catalog, summary, recovered)
    summary.run_manifest_key = key
    try:
        rt.catalog.record_run(
            summary.run_id,
            summary.started_at,
            summary.finished_at,
            summary.exit_code,
            summary.to_json(),
            worker_id=summary.worker_id,
            manifest_key=key,
            manifest_sha256=digest,
        )
    except ArchiverError as exc:
        # the run manifest, if stored, holds the exit code before this failure
        _not_kept(summary, "run_not_recorded", "the run was not recorded in the catalog", exc)


def _unlisted(catalog: SqlCatalog, summary: RunSummary) -> list[UnlistedPass]:
    """The passes earlier runs committed and no run manifest lists (those runs died
    before storing theirs): this run's manifest lists them as recovered. A catalog
    that cannot say lists none now; the next run finds them."""
    log = structlog.get_logger("archiver.app")
    try:
        found = catalog.unlisted(summary.started_at, RECOVERED_PER_RUN)
    except ArchiverError as exc:
        log.warning("unlisted_passes_not_read", reason=exc.reason, error=str(exc))
        return []
    if found:
        log.warning("unlisted_passes_recovered", run_id=summary.run_id, count=len(found))
    return found


def _mark_listed(catalog: SqlCatalog, summary: RunSummary, recovered: list[UnlistedPass]) -> None:
    """Record in the catalog which passes the run manifest, now stored and chained,
    lists. If the catalog refuses, they stay unlisted: the next run lists them again
    (listed twice is harmless; listed nowhere is what this prevents)."""
    try:
        catalog.mark_listed(summary.run_id, listed_by(summary, recovered))
    except ArchiverError as exc:
        structlog.get_logger("archiver.app").warning(
            "listed_passes_not_marked", run_id=summary.run_id, reason=exc.reason, error=str(exc)
        )


def _not_kept(summary: RunSummary, event: str, what: str, exc: ArchiverError) -> None:
    """Log that part of the run's record could not be kept, and say so in the summary:
    a run whose record is lost is a systemic failure (exit 3)."""
    structlog.get_logger("archiver.app").error(
        event, run_id=summary.run_id, reason=exc.reason, error=str(exc)
    )
    if summary.systemic_error is None:
        summary.systemic_error = f"{exc.reason}: {exc}; {what}"
    else:
        summary.systemic_error += f"; {what} ({exc.reason})"


def age_recipients(settings: Settings) -> list[Any]:
    from pyrage import x25519

    return [x25519.Recipient.from_str(r) for r in settings.client_side_encryption.recipients]


def chain_id(settings: Settings) -> str:
    """The run-manifest chain this process extends: its configured worker id, or one
    shared chain ("main") that concurrent workers extend one at a time."""
    return settings.catalog.worker_id or "main"


def load_signer(settings: Settings) -> Signer:
    key = settings.signing.key
    if key is None:
        raise ConfigError(
            "no signing key: manifests are signed with Ed25519; set "
            "IDPASS_ARCHIVER_SIGNING_KEY or signing.key_file (create one with "
            "`openssl genpkey -algorithm ed25519`)",
            key="signing.key_file",
        )
    try:
        return Signer.from_pem(key.get_secret_value().encode())
    except SigningKeyError as exc:
        raise ConfigError(str(exc), key="signing.key_file") from None


def object_lock(settings: Settings, clock: Clock) -> ObjectLock | None:
    """The configured Object Lock retention for an object written now (None: off).
    Every object a run writes gets it: the passes' (see the pipeline), the run
    manifests, their signatures and the public key's copy."""
    lock = settings.object_lock
    if lock.mode is None:
        return None
    return ObjectLock(lock.mode, clock.now() + timedelta(days=lock.retain_days))


def trusted_verifiers(settings: Settings, signer: Signer) -> list[Verifier]:
    """The keys whose run manifests a run adopts into its chain, as ``verify`` trusts
    them: this signer's, and the earlier ones listed in ``signing.public_key_files``."""
    trusted = [signer.verifier]
    trusted += read_public_keys(settings.signing.public_key_files, key="signing.public_key_files")
    return trusted


def publish_public_key(
    store: ObjectStore, layout: Layout, signer: Signer, lock: ObjectLock | None = None
) -> str:
    """Put the public key beside the archive (for convenience: auditors should take
    the key they trust from the README's channel, not from the bucket).

    Raises :class:`PublicKeyConflict` when the key's copy holds other bytes: the key
    id is public, so anyone who can write to the bucket can put an object there."""
    pem = signer.verifier.public_pem()
    key = layout.public_key(signer.key_id)
    try:
        store.put(
            key, pem, sha256=sha256_hex(pem), content_type="application/x-pem-file", lock=lock
        )
    except ObjectConflict as exc:
        raise PublicKeyConflict(
            f"the public key's copy {key} holds an object that does not match this "
            f"signer's public key (key id {signer.key_id}; stored sha256 "
            f"{exc.existing_sha256}, ours {exc.new_sha256}): someone else wrote it, and "
            "nothing is archived while it is there. Find out who can write to the "
            "bucket; then delete that object, or, if Object Lock holds it, sign with a "
            "new key (signing.key_file) and list the old public key in "
            "signing.public_key_files",
            key=key,
            existing_sha256=exc.existing_sha256,
            new_sha256=exc.new_sha256,
        ) from None
    return key


def write_run_manifest(
    rt: Runtime,
    signer: Signer,
    summary: RunSummary,
    recovered: Sequence[UnlistedPass] = (),
) -> tuple[str, str]:
    """Sign and store the run manifest, chained to the previous one of this chain, and
    make it the chain's head; returns its key and SHA-256. ``recovered``: passes
    earlier runs committed and listed nowhere, listed here marked ``recovered``.

    Store first, then move the head: the store's calls (looking for an orphan to adopt,
    the puts) run outside any catalog transaction, and the head then moves in a short
    one, only if it is still the head the manifest was chained to (a compare-and-set,
    ``chain_move``). When another run of the chain moved it meanwhile, the manifest is
    placed again against the new head (see :class:`_ChainAppend`), at most
    :data:`CHAIN_ATTEMPTS` times.
    """
    return _ChainAppend(rt, signer, summary, recovered).run()


#: How often a run tries to move its chain's head to its run manifest. A try fails only
#: when another run of the same chain moved the head after this one read it.
CHAIN_ATTEMPTS = 5
#: How many links back from the head a run looks for its own run manifest (one that
#: another run chained after while this one was trying): far more than can follow it
#: while it tries.
CHAIN_LOOKBACK = 100

RunLink = tuple[str, str]  # a run manifest's key and SHA-256


@dataclass(frozen=True, slots=True)
class _Stored:
    """The version of a run's manifest in the store: its SHA-256 and what it follows."""

    sha256: str
    previous: RunLink | None


class _ChainAppend:
    """One run manifest appended to its chain (:func:`write_run_manifest`).

    Each try reads the head and follows it through the manifests stored after it that
    chain to it (:func:`orphan_successor`: a killed run's, or one whose run has not
    moved the head yet) to the chain's tip. Then:

    * our manifest is on that line: the head moves to it;
    * the head is our manifest or lies past it (another run chained after ours and
      moved the head first): done, ours is in the chain;
    * otherwise (not stored yet, or it follows a manifest another run followed first,
      which would fork the chain): it is stored chained to the tip (a new version
      replaces the one stored before) and the head moves to it.
    """

    def __init__(
        self,
        rt: Runtime,
        signer: Signer,
        summary: RunSummary,
        recovered: Sequence[UnlistedPass] = (),
    ) -> None:
        self.rt = rt
        self.signer = signer
        self.summary = summary
        self.recovered = recovered
        self.layout = Layout(rt.settings.storage.clean_prefix)
        self.chain = chain_id(rt.settings)
        self.key = self.layout.run(summary.run_id, summary.started_at)
        self.stored: _Stored | None = None
        self.trusted = trusted_verifiers(rt.settings, signer)
        self.log = structlog.get_logger("archiver.app")

    def run(self) -> RunLink:
        catalog = self.rt.catalog
        for attempt in range(1, CHAIN_ATTEMPTS + 1):
            head = catalog.chain_head(self.chain)
            line = self._line(head)
            if self.stored is None or self._mine() not in line:
                if self.stored is not None and self._behind(head):
                    return self._mine()  # another run chained after ours, and moved the head
                self._store(line[-1] if line else None)
            if catalog.chain_move(self.chain, head, self._mine()):
                return self._mine()
            self.log.warning("run_chain_head_moved", key=self.key, attempt=attempt)
        if self._behind(catalog.chain_head(self.chain)):
            return self._mine()
        raise CatalogError(
            f"run chain {self.chain}: other runs moved its head {CHAIN_ATTEMPTS} times "
            f"while this run tried to chain {self.key}; the run manifest is stored but "
            "not in the chain (verify reports it)"
        )

    def _mine(self) -> RunLink:
        assert self.stored is not None
        return self.key, self.stored.sha256

    def _line(self, head: RunLink | None) -> list[RunLink]:
        """The head, then each manifest stored after it that follows the one before
        (oldest first); empty for a chain not begun."""
        line = [head] if head is not None else []
        while line:
            found = orphan_successor(
                self.rt.store,
                self.layout,
                self.chain,
                *line[-1],
                self.rt.clock.now(),
                trusted=self.trusted,
            )
            if found is None or found in line:
                break
            if found[0] != self.key:
                self.log.warning("run_manifest_adopted", key=found[0])
            line.append(found)
        return line

    def _behind(self, head: RunLink | None) -> bool:
        """Whether our stored manifest is ``head`` or one of its predecessors: walk back
        along the previous links until ours (True), or the manifest ours follows, the
        chain's start or :data:`CHAIN_LOOKBACK` links (False)."""
        assert self.stored is not None
        link = head
        for _ in range(CHAIN_LOOKBACK):
            if link is None or link == self.stored.previous:
                return False
            if link == self._mine():
                return True
            _, previous = chain_link_of(self.rt.store.get(link[0]))
            link = (previous.key, previous.sha256) if previous is not None else None
        return False

    def _store(self, previous: RunLink | None) -> None:
        """Sign and put the manifest chained to ``previous``, its signature first."""
        s = self.rt.settings
        doc = build_run_manifest(
            self.summary,
            chain_id=self.chain,
            archiver_version=__version__,
            config_fingerprint=s.fingerprint(),
            previous_key=previous[0] if previous else None,
            previous_sha256=previous[1] if previous else None,
            signing_key_id=self.signer.key_id,
            recovered=self.recovered,
        )
        data, digest = run_manifest_bytes(doc, check=False)
        sig = self.signer.sign(data)
        again = self.stored is not None  # ours follows what another run's followed first
        if again:
            self.log.warning(
                "run_manifest_rechained", key=self.key, previous=previous[0] if previous else None
            )
        store, lock = self.rt.store, object_lock(s, self.rt.clock)
        store.put(
            signature_key(self.key),
            sig,
            sha256=sha256_hex(sig),
            content_type=OCTET_TYPE,
            lock=lock,
            overwrite=again,
        )
        store.put(self.key, data, sha256=digest, content_type=JSON_TYPE, lock=lock, overwrite=again)
        self.stored = _Stored(digest, previous)


#: How far before the head's day a run that followed it may have started (a run
#: stores its manifest, under its start date, when it ends).
ORPHAN_LOOKBACK = timedelta(days=2)


def orphan_successor(
    store: ObjectStore,
    layout: Layout,
    chain: str,
    head_key: str,
    head_sha: str,
    now: datetime,
    *,
    trusted: Sequence[Verifier],
) -> tuple[str, str] | None:
    """A stored run manifest of ``chain`` that follows the head but is not (yet) it.

    A run stores its manifest, then moves the chain's head in the catalog. Killed in
    between (SIGKILL, a lost node), it leaves a manifest naming the head as previous
    while the head stays put; the next run would name the same head and fork the chain
    (``verify``: chain_fork). The next run looks for such a manifest and chains after
    it instead. So does a run that ends while another's head move is under way: the
    compare-and-set on the head (:func:`write_run_manifest`) then sorts out which run
    moves it. Candidates are the ``.json`` objects in the day folders from two days
    before the head's to today, stored after the head; each is read to check its chain
    and its previous link.

    Anyone who can write to the bucket can put such an object, so a candidate is
    adopted only if its detached signature verifies under one of the ``trusted`` keys
    and it is a run manifest; any other is logged (``run_manifest_not_adopted``) and
    passed over. Returns its key and SHA-256, or None.
    """
    head = store.head(head_key)
    if head is None or head.last_modified is None:
        return None  # the head itself is missing: verify reports it; nothing to adopt
    wanted = (chain, ChainLink(head_key, head_sha))
    for info in _stored_after(store, layout, head, now):
        data = store.get(info.key)
        # An unreadable object is not a candidate: verify judges it.
        if chain_link_of(data) == wanted and _trusted(store, info.key, data, trusted):
            return info.key, sha256_hex(data)
    return None


def _stored_after(
    store: ObjectStore, layout: Layout, head: ObjectInfo, now: datetime
) -> Iterator[ObjectInfo]:
    """The ``.json`` objects under runs/ stored after ``head``, in the day folders from
    :data:`ORPHAN_LOOKBACK` before the head's to ``now``'s (none if the head's key is
    not of this layout)."""
    folder = head.key.rsplit("/", 1)[0]
    try:
        y, m, d = (int(part) for part in folder.rsplit("/", 3)[-3:])
        day = datetime(y, m, d, tzinfo=UTC) - ORPHAN_LOOKBACK
    except ValueError:
        return  # not a key of this layout
    assert head.last_modified is not None
    while day <= now:
        for info in store.list(layout.runs_day(day)):
            if (
                info.key.endswith(".json")
                and info.key != head.key
                and info.last_modified is not None
                and info.last_modified >= head.last_modified
            ):
                yield info
        day += timedelta(days=1)


def _trusted(store: ObjectStore, key: str, data: bytes, trusted: Sequence[Verifier]) -> bool:
    """Whether the run manifest ``data`` at ``key`` may join the chain; if not, log why."""
    reason = _distrust(store, key, data, trusted)
    if reason is not None:
        structlog.get_logger("archiver.app").warning(
            "run_manifest_not_adopted", key=key, reason=reason
        )
    return reason is None


def _distrust(store: ObjectStore, key: str, data: bytes, trusted: Sequence[Verifier]) -> str | None:
    """Why ``data`` is no run manifest to adopt (verify's names for it), or None:
    ``unsigned`` (no signature beside it), ``bad_signature`` (not by a trusted key),
    ``invalid_run_manifest`` (signed, but not of the published schema)."""
    try:
        sig = store.get(signature_key(key))
    except ObjectNotFound:
        return "unsigned"
    if not any(v.verify(data, sig) for v in trusted):
        return "bad_signature"
    try:
        RunManifest.parse(data)
    except FormatError:
        return "invalid_run_manifest"
    return None


def run_cycle_sync(rt: Runtime, **kwargs: Any) -> RunSummary:
    return asyncio.run(run_cycle(rt, **kwargs))
