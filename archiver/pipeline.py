"""One archival cycle, composed from the boundaries.

For each due pass, most urgent first, with bounded concurrency:

1. if its manifest already exists, record it as archived (no image fetch);
2. read ``/idpass/details`` with images;
3. classify: not complete yet → ``not_ready``; a status not archived → ``skipped``;
   no images → ``no_images`` (retention 0 or none inside the window) or ``expired``
   (the window closed before archival);
4. decode the Base64, check each JPEG, hash it once;
5. put the images, ``record.json`` and ``SHA256SUMS``; then ``manifest.json`` last;
6. mark the pass archived in the catalog.

A failure in one pass becomes that pass's outcome with a reason; a systemic failure
(bad token, store refusing us, catalog down) stops the run: passes in flight finish,
no new ones start, and the exit code says so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import orjson
import pyrage
import structlog

from archiver import __version__, errors
from archiver.catalog import Catalog, CatalogEntry, Outcome, OutcomeUpdate, Scope
from archiver.clock import Clock, isoformat
from archiver.core import manifest as mf
from archiver.core.images import (
    Base64Text,
    CheckedImage,
    check_image,
    decode_base64,
    sealed_payload,
    sha256_hex,
    valid_slot_name,
)
from archiver.core.layout import Layout
from archiver.core.retention import images_deadline
from archiver.core.signing import Signer
from archiver.errors import (
    ArchiverError,
    DecryptionError,
    ImageDecodeError,
    ObjectConflict,
    PayloadError,
)
from archiver.idpass import crypto
from archiver.idpass.client import PassRead
from archiver.idpass.models import SLOTS
from archiver.idpass.transport import BodySlot, body_slot
from archiver.results import PassResult, RunSummary
from archiver.store import ObjectLock, ObjectStore, PutResult

log = structlog.get_logger("archiver.pipeline")

ID_CHUNK = 500  # pass ids per claim when a backfill names them


class DetailsReader(Protocol):
    async def details(
        self,
        pass_id: str,
        cipher_key: str | None = None,
        *,
        images: bool = True,
        documents: bool = False,
        logs: bool = False,
        decrypt_locally_with: str | None = None,
    ) -> PassRead: ...


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    # Passes whose details responses are held (and decoded) at once; as many more may
    # be uploading. Bounds memory: each holds a response body or its decoded images.
    concurrency: int = 4
    # Details requests in flight (api.concurrency). A request waiting for the API's
    # answer holds no body: the transport waits for one of the concurrency slots
    # before reading it, so API latency is hidden without more memory.
    requests: int = 12
    # Puts in flight at once (storage.upload_threads): each holds a buffer of the S3
    # client's, so this bounds memory as the thread pool did for synchronous puts.
    max_puts: int = 16
    max_image_bytes: int = 15 * 1024 * 1024
    archive_statuses: tuple[str, ...] = ("complete",)
    decryption: str = "server"
    batch_size: int = 500
    max_attempts: int = 5
    retry_base: timedelta = timedelta(minutes=5)
    retry_cap: timedelta = timedelta(hours=6)
    not_ready_recheck: timedelta = timedelta(hours=1)
    sse: str = "aws:kms"
    kms_key_id: str | None = None
    worker_id: str = "worker"
    lease_seconds: int = 600
    not_ready_margin: timedelta = timedelta(hours=24)
    # When the next scheduled run starts: passes due before it are flagged at risk.
    next_run: datetime | None = None
    # Object Lock retention on every object written (None: no retention).
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] | None = None
    lock_retain_days: int = 2555


class _Abort(Exception):
    """Raised inside a pass when the whole run must stop (systemic failure)."""


class Pipeline:
    def __init__(
        self,
        *,
        api: DetailsReader,
        store: ObjectStore,
        catalog: Catalog,
        layout: Layout,
        options: PipelineOptions,
        clock: Clock,
        executor: ThreadPoolExecutor,
        signer: Signer,
    ) -> None:
        self.api = api
        self.store = store
        self.catalog = catalog
        self.layout = layout
        self.opt = options
        self.clock = clock
        self.executor = executor
        self.signer = signer
        self._stop = asyncio.Event()
        self._systemic: str | None = None
        # What a details read taught us about a pass, saved with its outcome.
        self._learned: dict[str, dict[str, Any]] = {}
        # age X25519 recipients: images and records are encrypted to them before upload.
        self.age_recipients: list[Any] = []
        # (key_ref, pass_id) -> cipher key, for keys kept in their source (blocking).
        self.key_lookup: Callable[[str, str], str | None] | None = None
        # Called after each pass (progress reporting); must be cheap.
        self.on_result: Callable[[PassResult], None] | None = None
        self._inflight: set[asyncio.Task[PassResult | None]] = set()
        # made per run, in its event loop (_work)
        self._request_slots: asyncio.Semaphore
        self._body_slots: asyncio.Semaphore
        self._upload_slots: asyncio.Semaphore
        self._put_slots: asyncio.Semaphore
        self._grace_handle: asyncio.TimerHandle | None = None

    # -- running ------------------------------------------------------------------

    def request_stop(self, grace: float | None = None) -> None:
        """Start no new passes; let those in flight finish, for at most ``grace``
        seconds if given, after which they are abandoned (nothing half-committed: the
        manifest is written last, and their leases are released or expire)."""
        if not self._stop.is_set():
            log.warning("stop_requested", in_flight=len(self._inflight), grace_seconds=grace)
        self._stop.set()
        if grace is not None and self._grace_handle is None:
            self._grace_handle = asyncio.get_running_loop().call_later(grace, self._abandon)

    def _abandon(self) -> None:
        if self._inflight:
            log.warning("passes_abandoned", count=len(self._inflight))
        for task in list(self._inflight):
            task.cancel()

    async def _io(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: fn(*args, **kwargs))

    async def run(
        self,
        *,
        limit: int | None = None,
        pass_ids: Sequence[str] | None = None,
        dry_run: bool = False,
        run_id: str | None = None,
        scope: Scope | None = None,
    ) -> RunSummary:
        summary = RunSummary(
            run_id=run_id or new_run_id(self.clock.now()),
            started_at=self.clock.now(),
            dry_run=dry_run,
            worker_id=self.opt.worker_id,
            next_run=self.opt.next_run,
        )
        bound = structlog.contextvars.bound_contextvars(run_id=summary.run_id)
        with bound:
            log.info("run_started", dry_run=dry_run, limit=limit)
            if dry_run:
                summary.planned = self._plan(limit, pass_ids, scope)
            else:
                await self._work(summary, limit, pass_ids, scope)
                summary.stopped_early = self._stop.is_set()
                if self.opt.next_run is not None and self._systemic is None:
                    summary.at_risk = [
                        (e.pass_id, e.deadline)
                        for e in self.catalog.at_risk(self.clock.now(), self.opt.next_run)
                        if e.deadline is not None
                    ]
                    for pid, deadline in summary.at_risk:
                        log.warning("pass_at_risk", pass_id=pid, deadline=isoformat(deadline))
            summary.finished_at = self.clock.now()
            summary.systemic_error = self._systemic
        return summary

    def _plan(
        self, limit: int | None, pass_ids: Sequence[str] | None, scope: Scope | None
    ) -> list[dict[str, Any]]:
        now, cap = self.clock.now(), limit or 1_000_000
        if pass_ids:
            entries = self._select_explicit(pass_ids)
        elif scope is not None and scope.pass_ids is not None:
            entries = []
            for part in _id_chunks(scope):
                entries.extend(self.catalog.due(now, cap, part))
        else:
            entries = self.catalog.due(now, cap, scope)
        planned = []
        for e in entries[: limit or None]:
            planned.append(
                {
                    "pass_id": e.pass_id,
                    "state": e.state.value,
                    "deadline": isoformat(e.deadline) if e.deadline else None,
                    "would_write_under": self.layout.pass_dir(e.pass_id),
                }
            )
        return planned

    def _select_explicit(self, pass_ids: Sequence[str]) -> list[CatalogEntry]:
        found = []
        for pid in pass_ids:
            entry = self.catalog.get(pid)
            if entry is None:
                raise ArchiverError(f"pass {pid} is not in the catalog; enqueue it first")
            found.append(entry)
        return found

    async def _work(
        self,
        summary: RunSummary,
        limit: int | None,
        pass_ids: Sequence[str] | None,
        scope: Scope | None = None,
    ) -> None:
        # passes waiting for the API, holding a response body, uploading (see _archive)
        width = self.opt.requests + 2 * self.opt.concurrency
        queue: asyncio.Queue[CatalogEntry | None] = asyncio.Queue(maxsize=width)
        unprocessed: set[str] = set()  # claimed but not (yet) finished
        finished = asyncio.Event()  # a pass ended: the feeder may have room to claim

        async def worker() -> None:
            while True:
                entry = await queue.get()
                if entry is None:
                    return
                if self._stop.is_set():
                    finished.set()  # the feeder may be waiting for room: it stops too
                    continue
                task = asyncio.create_task(self._one(entry))
                self._inflight.add(task)
                try:
                    result = await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise
                    result = None  # abandoned after the stop grace period
                finally:
                    self._inflight.discard(task)
                    finished.set()
                if result is not None:
                    summary.add(result)
                    unprocessed.discard(entry.pass_id)
                    if self.on_result is not None:
                        self.on_result(result)

        if not pass_ids and scope is None:
            expired, gone = self.catalog.close_overdue(self.clock.now())
            for pid in expired:
                log.warning("pass_expired", pass_id=pid)
                summary.add(
                    PassResult(pid, Outcome.EXPIRED, "retention window closed before archival")
                )
            for pid in gone:
                summary.add(PassResult(pid, Outcome.NO_IMAGES, "image_retention_days is 0"))

        self._request_slots = asyncio.Semaphore(self.opt.requests)
        self._body_slots = asyncio.Semaphore(self.opt.concurrency)
        self._upload_slots = asyncio.Semaphore(self.opt.concurrency)
        self._put_slots = asyncio.Semaphore(self.opt.max_puts)
        workers = [asyncio.create_task(worker()) for _ in range(width)]
        try:
            if pass_ids:
                for entry in self._select_explicit(pass_ids):
                    if self._stop.is_set():
                        break
                    await queue.put(entry)
            else:
                await self._feed(queue, width, limit, unprocessed, finished, scope)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            if unprocessed:
                self.catalog.release(self.opt.worker_id, sorted(unprocessed))

    async def _feed(
        self,
        queue: asyncio.Queue[CatalogEntry | None],
        width: int,
        limit: int | None,
        unprocessed: set[str],
        finished: asyncio.Event,
        scope: Scope | None,
    ) -> None:
        """Claim due passes in small batches and queue them. A worker holds at most
        ``width`` leases, the passes it is working on: claiming further ahead would
        leave passes leased but idle while other workers of a shared catalog have
        nothing to do, and their leases ageing. A scope with many pass ids is worked
        through in chunks."""
        fed = 0
        batch_min = max(1, width // 4)  # fewer, larger claims: one statement each
        scopes: list[Scope | None] = [scope]
        if scope is not None and scope.pass_ids is not None:
            scopes = list(_id_chunks(scope))
        for part in scopes:
            while not self._stop.is_set():
                room = width - len(unprocessed)
                if room < batch_min:
                    finished.clear()
                    await finished.wait()
                    continue
                want = room if limit is None else min(room, limit - fed)
                if want <= 0:
                    return
                batch = self.catalog.claim(
                    self.opt.worker_id, self.clock.now(), want, self.opt.lease_seconds, part
                )
                if not batch:
                    break
                unprocessed.update(e.pass_id for e in batch)
                for entry in batch:
                    if self._stop.is_set():
                        return
                    fed += 1
                    await queue.put(entry)

    # -- one pass -----------------------------------------------------------------

    async def _one(self, entry: CatalogEntry) -> PassResult | None:
        with structlog.contextvars.bound_contextvars(pass_id=entry.pass_id):
            try:
                result = await self._archive(entry)
            except _Abort:
                return None
            except ArchiverError as exc:
                if exc.systemic:
                    self._fail_systemic(exc)
                    return None
                result = self._error_result(entry, exc)
            except Exception as exc:  # a bug must not take the whole run down
                where = errors.where(exc)
                log.error("pass_crashed", error_type=type(exc).__name__, where=where)
                result = PassResult(
                    entry.pass_id, Outcome.RETRY, f"internal_error: {type(exc).__name__} at {where}"
                )
            try:
                self._record(entry, result)
            except ArchiverError as exc:
                self._fail_systemic(exc)
                return None
            log.info(
                "pass_done",
                outcome=result.outcome.value,
                reason=result.reason,
                image_count=result.images,  # not `images`: the redactor masks that name
                image_bytes=result.image_bytes,
            )
            return result

    def _fail_systemic(self, exc: ArchiverError) -> None:
        if self._systemic is None:
            self._systemic = f"{exc.reason}: {exc}"
            log.error("run_aborted", reason=exc.reason, error=str(exc))
        self._stop.set()

    def _error_result(self, entry: CatalogEntry, exc: ArchiverError) -> PassResult:
        reason = f"{exc.reason}: {exc}"
        if exc.retryable and entry.attempts + 1 < self.opt.max_attempts:
            return PassResult(entry.pass_id, Outcome.RETRY, reason)
        if exc.retryable:
            reason = f"attempts exhausted ({self.opt.max_attempts}); last: {reason}"
        return PassResult(entry.pass_id, Outcome.FAILED, reason)

    def _record(self, entry: CatalogEntry, result: PassResult) -> None:
        now = self.clock.now()
        next_at = None
        if result.outcome is Outcome.RETRY:
            delay = min(self.opt.retry_base * (2**entry.attempts), self.opt.retry_cap)
            next_at = now + delay
        elif result.outcome is Outcome.NOT_READY:
            delay = self.opt.not_ready_recheck * (2**entry.attempts)
            next_at = now + min(delay, self.opt.retry_cap)
        self.catalog.record(
            OutcomeUpdate(
                pass_id=entry.pass_id,
                outcome=result.outcome,
                reason=result.reason,
                manifest_key=result.manifest_key,
                manifest_sha256=result.manifest_sha256,
                next_attempt_at=next_at,
                image_count=result.images,
                image_bytes=result.image_bytes,
                **self._learned.pop(entry.pass_id, {}),
            ),
            now,
        )

    def _learn(self, pass_id: str, **values: Any) -> None:
        self._learned.setdefault(pass_id, {}).update(values)

    async def _archive(self, entry: CatalogEntry) -> PassResult:
        """Read the pass, then upload it, in three bounded stages.

        Up to ``requests`` passes wait for the API's answer; that holds no memory. A
        pass takes a body slot before its response body is read (the transport waits
        for it after the headers) and keeps it while the images are decoded and
        checked; it takes an upload slot before it lets the body slot go. At most
        ``concurrency`` passes hold a body and as many are uploading, which bounds
        memory; API latency, decoding and S3 latency overlap.
        """
        slot = BodySlot(self._body_slots)
        token = body_slot.set(slot)
        try:
            staged = await self._read(entry, slot)
            if not isinstance(staged, PassResult):
                await self._upload_slots.acquire()
        finally:
            body_slot.reset(token)
            slot.release()
        if isinstance(staged, PassResult):
            return staged
        read, images, deadline = staged
        try:
            return await self._write(entry, read, images, deadline)
        finally:
            self._upload_slots.release()

    async def _read(
        self, entry: CatalogEntry, slot: BodySlot
    ) -> PassResult | tuple[PassRead, list[CheckedImage], datetime | None]:
        """A pass's outcome if it ends here, or its checked images ready to upload."""
        pid = entry.pass_id
        existing = await self._existing_manifest(pid)
        if existing is not None:
            return existing

        local = self.opt.decryption == "local"
        passthrough = self.opt.decryption == "passthrough"
        key = None if passthrough else entry.cipher_key
        if (
            key is None
            and not passthrough
            and entry.key_ref is not None
            and self.key_lookup is not None
        ):
            # The key stays in the customer's source; it is read only now, into memory.
            key = await self._io(self.key_lookup, entry.key_ref, pid)
        async with self._request_slots:
            if self._stop.is_set():
                raise _Abort  # stopped while this pass waited: send nothing more
            read = await self.api.details(
                pid,
                None if local else key,
                images=True,
                decrypt_locally_with=key if local else None,
            )
        # The transport took the slot before reading the body; a reader that does not
        # (another transport, a test double) has read it already: take it now.
        await slot.acquire()
        d = read.details
        deadline = images_deadline(d.completed_at, d.image_retention_days)
        self._learn(
            pid,
            api_status=d.status,
            completed_at=d.completed_at,
            image_retention_days=d.image_retention_days,
            deadline=deadline,
        )
        if not d.is_terminal:
            return self._not_ready(pid, d.created_at, d.link_validity_days, d.status)
        if d.status not in self.opt.archive_statuses:
            return PassResult(pid, Outcome.SKIPPED, f"status {d.status} is not archived by config")
        if d.completed_at is None:
            raise PayloadError("terminal pass has no completed_at", pass_id=pid)

        if not read.images:
            return self._no_images(pid, d.image_retention_days, deadline, read)

        if read.encrypted and passthrough:
            images = await self._sealed_images(pid, read)
        elif read.encrypted and not local:
            raise DecryptionError(
                "images arrived encrypted: no cipher key is known for this pass "
                "(add it to the catalog, or use decryption = local with the key)",
                pass_id=pid,
            )
        else:
            images = await self._check_images(pid, read, key if local else None)
        read.images.clear()  # the Base64 is no longer needed: free it before uploading
        return read, images, deadline

    def _not_ready(
        self, pid: str, created_at: datetime | None, link_days: int | None, status: str
    ) -> PassResult:
        """Not complete yet: check again later, but give up once the customer's link
        has long stopped working (it can no longer complete)."""
        if created_at is None or link_days is None:
            return PassResult(pid, Outcome.NOT_READY, f"status {status}")
        link_expires = created_at + timedelta(days=link_days)
        self._learn(pid, link_expires_at=link_expires)
        give_up = link_expires + self.opt.not_ready_margin
        if self.clock.now() >= give_up:
            return PassResult(
                pid,
                Outcome.SKIPPED,
                f"still {status} {self.opt.not_ready_margin} after its link expired "
                f"at {isoformat(link_expires)}",
            )
        return PassResult(pid, Outcome.NOT_READY, f"status {status}")

    def _no_images(
        self, pid: str, retention: int | None, deadline: datetime | None, read: PassRead
    ) -> PassResult:
        if retention == 0:
            return PassResult(pid, Outcome.NO_IMAGES, "image_retention_days is 0")
        if deadline is not None and self.clock.now() >= deadline:
            return PassResult(
                pid, Outcome.EXPIRED, f"retention window closed at {isoformat(deadline)}"
            )
        if not read.images_field_present:
            return PassResult(pid, Outcome.NO_IMAGES, "response has no images field")
        return PassResult(pid, Outcome.NO_IMAGES, "no images returned inside the window")

    async def _existing_manifest(self, pid: str) -> PassResult | None:
        key = self.layout.manifest(pid)
        info = await self._io(self.store.head, key)
        if info is None:
            return None
        data: bytes = await self._io(self.store.get, key)
        doc = mf.parse_manifest(data)
        return PassResult(
            pid,
            Outcome.ARCHIVED,
            "manifest already present",
            images=int(doc["image_count"]),
            image_bytes=int(doc["image_bytes"]),
            manifest_key=key,
            manifest_sha256=sha256_hex(data),
            already_archived=True,
        )

    async def _check_images(
        self, pid: str, read: PassRead, local_key: str | None
    ) -> list[CheckedImage]:
        raw_key = crypto.parse_key(local_key) if local_key is not None else None
        limit = self.opt.max_image_bytes

        def one(slot: str, text: Base64Text) -> CheckedImage:
            if not valid_slot_name(slot):
                raise ImageDecodeError("image slot name is not a safe key segment", pass_id=pid)
            if raw_key is not None:
                data = crypto.decrypt_value(raw_key, text)
                if len(data) > limit:
                    raise ImageDecodeError(
                        f"image exceeds the size limit of {limit} bytes", slot=slot
                    )
            else:
                data = decode_base64(text, slot=slot, max_bytes=limit)
            return check_image(slot, data)

        def every() -> list[CheckedImage]:
            # one hand-off to a thread for the pass, not one per image: decoding,
            # checking and hashing release the GIL or are short, and other passes
            # keep the other core busy meanwhile
            checked = []
            for slot, text in read.images.items():
                try:
                    checked.append(one(slot, text))
                except PayloadError as exc:
                    raise type(exc)(f"slot {slot}: {exc.message}", pass_id=pid, slot=slot) from None
            return checked

        result: list[CheckedImage] = await self._io(every)
        return result

    async def _sealed_images(self, pid: str, read: PassRead) -> list[CheckedImage]:
        out = []
        for slot, token in read.images.items():
            if not valid_slot_name(slot):
                raise ImageDecodeError("image slot name is not a safe key segment", pass_id=pid)
            try:
                out.append(sealed_payload(slot, token, max_bytes=self.opt.max_image_bytes))
            except PayloadError as exc:
                raise type(exc)(f"slot {slot}: {exc.message}", pass_id=pid, slot=slot) from None
        return out

    def _lock(self) -> ObjectLock | None:
        if self.opt.lock_mode is None:
            return None
        until = self.clock.now() + timedelta(days=self.opt.lock_retain_days)
        return ObjectLock(self.opt.lock_mode, until)

    async def _put(
        self,
        pid: str,
        key: str,
        data: bytes,
        sha: str,
        ctype: str,
        *,
        adopt: bool = False,
        overwrite: bool = False,
    ) -> PutResult:
        try:
            async with self._put_slots:
                return await self.store.put_async(
                    key,
                    data,
                    sha256=sha,
                    content_type=ctype,
                    lock=self._lock(),
                    overwrite=overwrite,
                    offload=self._io,
                )
        except ObjectConflict:
            if not adopt:
                raise
        # An earlier, interrupted attempt stored a different but genuine record for
        # this pass and never wrote the manifest. Keep that object rather than
        # replacing it, and list it as it is.
        info = await self._io(self.store.head, key)
        if info is None or info.sha256 is None:
            raise ObjectConflict(
                "object changed while being adopted",
                key=key,
                existing_sha256=None,
                new_sha256=sha,
                pass_id=pid,
            )
        log.warning("record_adopted", key=key)
        return PutResult.existing(info, info.sha256)

    async def _write(
        self,
        entry: CatalogEntry,
        read: PassRead,
        images: list[CheckedImage],
        deadline: datetime | None,
    ) -> PassResult:
        pid = entry.pass_id
        d = read.details
        lay = self.layout
        age = self.age_recipients
        record_bytes = orjson.dumps(read.record, option=orjson.OPT_SORT_KEYS)
        record_sha = sha256_hex(record_bytes)

        image_keys = [
            lay.sealed_image(pid, img.slot) if img.sealed else lay.image(pid, img.slot)
            for img in images
        ]
        keys = [*image_keys, lay.record(pid)]
        plain = [*(img.data for img in images), record_bytes]
        types = [SIG_TYPE if img.sealed else "image/jpeg" for img in images] + [RECORD_TYPE]
        if age:
            # age output is randomised: a crashed attempt's object is adopted as it is.
            bodies: list[bytes] = await asyncio.gather(
                *(self._io(pyrage.encrypt, data, age) for data in plain)
            )
            keys = [k + AGE_SUFFIX for k in keys]
            hashes = [sha256_hex(body) for body in bodies]
            types = [AGE_TYPE] * len(keys)
        else:
            bodies, hashes = plain, [*(img.sha256 for img in images), record_sha]
        # SHA256SUMS lists hashes known before any put: it goes up with the images and
        # the record, in the same round trip.
        sums = mf.sha256sums([(lay.relative(pid, k), h) for k, h in zip(keys, hashes, strict=True)])
        adopt = [bool(age)] * len(images) + [True]  # an earlier attempt's record is kept
        *results, sums_res = await asyncio.gather(
            *(
                self._put(pid, k, body, h, t, adopt=ad)
                for k, body, h, t, ad in zip(keys, bodies, hashes, types, adopt, strict=True)
            ),
            self._put(pid, lay.sums(pid), sums, sha256_hex(sums), SUMS_TYPE, adopt=True),
        )
        stored_sums = mf.sha256sums([(lay.relative(pid, r.key), r.sha256) for r in results])
        if sums_res.sha256 != sha256_hex(stored_sums):
            # An object of an earlier, uncommitted attempt was adopted (or its
            # SHA256SUMS): write the list of what is actually stored as a new version.
            sums_res = await self._put(
                pid,
                lay.sums(pid),
                stored_sums,
                sha256_hex(stored_sums),
                SUMS_TYPE,
                overwrite=True,
            )
        record_result = results[-1]
        record_plain = record_sha if age else None
        record_size = len(record_bytes) if age else None

        entries: list[mf.ObjectEntry] = []
        for img, res in zip(images, results[:-1], strict=True):
            entries.append(
                mf.ObjectEntry(
                    role="image",
                    key=res.key,
                    size=res.size,
                    sha256=res.sha256,
                    content_type=AGE_TYPE if age else SIG_TYPE if img.sealed else "image/jpeg",
                    version_id=res.version_id,
                    slot=img.slot,
                    width=None if img.sealed else img.width,
                    height=None if img.sealed else img.height,
                    payload=crypto.MARKER_VALUE if img.sealed else None,
                    retain_until=res.retain_until,
                    lock_mode=res.lock_mode,
                    plaintext_sha256=img.sha256 if age else None,
                    plaintext_size=img.size if age else None,
                )
            )
        entries.append(
            dataclasses.replace(
                _entry("record", record_result, AGE_TYPE if age else RECORD_TYPE),
                plaintext_sha256=record_plain,
                plaintext_size=record_size,
            )
        )
        entries.append(_entry("checksums", sums_res, SUMS_TYPE))
        present = {img.slot for img in images}
        missing = [s for s in SLOTS if s not in present]
        doc = mf.build_manifest(
            pass_id=pid,
            run_id=structlog.contextvars.get_contextvars().get("run_id", "unknown"),
            archived_at=self.clock.now(),
            archiver_version=__version__,
            status=d.status,
            verification_status=d.verification_status,
            created_at=d.created_at,
            completed_at=d.completed_at,
            image_retention_days=d.image_retention_days,
            images_deadline=deadline,
            objects=entries,
            missing_slots=missing,
            decryption=self.opt.decryption,
            sse=self.opt.sse,
            kms_key_id=self.opt.kms_key_id,
            signing_key_id=self.signer.key_id,
            age_recipients=[str(r) for r in age],
        )
        data, digest = mf.manifest_bytes(doc, check=False)
        mkey = lay.manifest(pid)
        signature = self.signer.sign(data)
        try:
            await self._put(pid, mkey + SIG_SUFFIX, signature, sha256_hex(signature), SIG_TYPE)
        except ObjectConflict:
            existing = await self._existing_manifest(pid)
            if existing is not None:
                log.warning("manifest_committed_by_another_worker", key=mkey)
                return existing
            # A signature left by an attempt that never committed its manifest: the
            # manifest is not written yet, so a new signature version replaces it.
            await self._put(
                pid, mkey + SIG_SUFFIX, signature, sha256_hex(signature), SIG_TYPE, overwrite=True
            )
        try:
            await self._put(pid, mkey, data, digest, "application/json")
        except ObjectConflict:
            # Another worker committed this pass meanwhile (its lease outlived ours):
            # its manifest stands; ours, with other timestamps, is not written.
            existing = await self._existing_manifest(pid)
            if existing is None:
                raise
            log.warning("manifest_committed_by_another_worker", key=mkey)
            return existing
        done = [*results, sums_res]
        written = sum(1 for r in done if not r.reused) + 2
        reused = sum(1 for r in done if r.reused)
        return PassResult(
            pid,
            Outcome.ARCHIVED,
            None,
            images=len(images),
            image_bytes=sum(i.size for i in images),
            objects_written=written,
            objects_reused=reused,
            manifest_key=mkey,
            manifest_sha256=digest,
        )


RECORD_TYPE = "application/json"
SUMS_TYPE = "text/plain; charset=us-ascii"
SIG_TYPE = "application/octet-stream"
AGE_TYPE = "application/age-encryption"
AGE_SUFFIX = ".age"
SIG_SUFFIX = ".sig"


def _entry(role: str, put: PutResult, content_type: str) -> mf.ObjectEntry:
    """A manifest entry for a non-image object, from what the store reported."""
    return mf.ObjectEntry(
        role=role,
        key=put.key,
        size=put.size,
        sha256=put.sha256,
        content_type=content_type,
        version_id=put.version_id,
        retain_until=put.retain_until,
        lock_mode=put.lock_mode,
    )


def _id_chunks(scope: Scope) -> list[Scope]:
    """A scope naming many passes, split into scopes of at most ID_CHUNK ids."""
    ids = scope.pass_ids or ()
    return [
        dataclasses.replace(scope, pass_ids=ids[i : i + ID_CHUNK])
        for i in range(0, len(ids), ID_CHUNK)
    ]


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
