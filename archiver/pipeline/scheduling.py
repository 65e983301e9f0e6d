"""The scheduling part of a cycle: claim, slots, stop, record.

For each due pass, most urgent first, with bounded concurrency:

1. if its manifest already exists, record it as archived (no image fetch), when a
   trusted key signed it and it names the pass; else the pass fails
   (``untrusted_manifest``) for a person to decide;
2. read ``/idpass/details`` with images and check them (:mod:`.read`);
3. plan the objects (:mod:`.plan`) and commit them, manifest last (:mod:`.commit`);
4. record the outcome, with what the read learned, in the catalog.

A failure in one pass becomes that pass's outcome with a reason: retried while its
attempts last, then ``failed``, an unexpected exception (a bug) included. A
systemic failure (bad token, store refusing us, catalog down) stops the run: passes
in flight finish, no new ones start, and the exit code says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from archiver import errors
from archiver.catalog import Catalog, CatalogEntry, Outcome, Scope
from archiver.clock import Clock, isoformat
from archiver.core.format import Layout
from archiver.core.manifest import SlotReport
from archiver.core.signing import Signer, Verifier
from archiver.errors import ArchiverError
from archiver.idpass.models import SLOTS
from archiver.idpass.transport import BodySlot
from archiver.pipeline import confirm
from archiver.pipeline.commit import Committer
from archiver.pipeline.options import PipelineOptions
from archiver.pipeline.plan import plan_images, plan_objects
from archiver.pipeline.read import DetailsReader, Ended, PassReader, Staged
from archiver.results import NOTHING_LEARNED, SLOT_CONFLICT, Learned, PassResult, RunSummary
from archiver.store import ObjectStore

log = structlog.get_logger("archiver.pipeline")

ID_CHUNK = 500  # pass ids per claim when a backfill names them


class _Abort(Exception):
    """Raised inside a pass when the whole run must stop (systemic failure)."""


@dataclass(frozen=True, slots=True)
class _RunParts:
    """What one run's passes share, made in the run's event loop."""

    requests: asyncio.Semaphore  # details requests in flight
    bodies: asyncio.Semaphore  # response bodies held (and decoded)
    uploads: asyncio.Semaphore  # passes committing


@dataclass
class _Tally:
    """What one run's feeder and workers share."""

    # Claims, counted per pass: a pass whose confirming read is due at once can be
    # claimed again before the worker that recorded its first read has looked at the
    # result, and that second claim must still be given back if the run stops.
    unprocessed: Counter[str] = field(default_factory=Counter)  # claimed, no result recorded
    busy: Counter[str] = field(default_factory=Counter)  # claimed, neither skipped nor ended
    # a pass ended: the feeder may have room to claim
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    confirm_at: list[datetime] = field(default_factory=list)  # confirming reads scheduled


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
        trusted: Sequence[Verifier] = (),
        age_recipients: Sequence[Any] = (),
        key_lookup: Callable[[str, str], str | None] | None = None,
        on_result: Callable[[PassResult], None] | None = None,
    ) -> None:
        """``trusted``: the keys whose stored manifests count as commits (default: the
        signer's). ``age_recipients``: images and records are encrypted to them before
        upload. ``key_lookup``: (key_ref, pass_id) -> cipher key, for keys kept in their
        source (blocking). ``on_result``: called after each pass (progress); cheap."""
        self.catalog, self.layout, self.opt, self.clock = catalog, layout, options, clock
        self.executor = executor
        self.on_result = on_result
        self.age = bool(age_recipients)
        self.reader = PassReader(
            api=api, opt=options, clock=clock, offload=self._io, key_lookup=key_lookup
        )
        self.committer = Committer(
            store=store,
            layout=layout,
            signer=signer,
            opt=options,
            clock=clock,
            offload=self._io,
            trusted=trusted,
        )
        self.committer.age_recipients = list(age_recipients)
        self._stop = asyncio.Event()
        self._systemic: str | None = None
        self._run_id = "unknown"
        self._inflight: set[asyncio.Task[PassResult | None]] = set()
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
        self._run_id = run_id or new_run_id(self.clock.now())
        summary = RunSummary(
            run_id=self._run_id,
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
        tally = _Tally()
        unprocessed, busy, finished = tally.unprocessed, tally.busy, tally.finished

        async def worker() -> None:
            while True:
                entry = await queue.get()
                if entry is None:
                    return
                if self._stop.is_set():
                    _drop_one(busy, entry.pass_id)
                    finished.set()  # the feeder may be waiting for room: it stops too
                    continue
                task = asyncio.create_task(self._one(entry, parts))
                self._inflight.add(task)
                try:
                    result = await task
                except asyncio.CancelledError:
                    if not task.cancelled():
                        raise
                    result = None  # abandoned after the stop grace period
                finally:
                    self._inflight.discard(task)
                    _drop_one(busy, entry.pass_id)
                    finished.set()
                if result is not None:
                    summary.add(result)
                    _drop_one(unprocessed, entry.pass_id)
                    if result.next_attempt_at is not None:
                        tally.confirm_at.append(result.next_attempt_at)
                    # progress counts passes settled, not the reads that confirm them
                    if self.on_result is not None and result.outcome is not Outcome.CONFIRMING:
                        self.on_result(result)

        if not pass_ids and scope is None:
            self._close_overdue(summary)

        parts = self._parts()
        workers = [asyncio.create_task(worker()) for _ in range(width)]
        try:
            if pass_ids:
                for entry in self._select_explicit(pass_ids):
                    if self._stop.is_set():
                        break
                    await queue.put(entry)
            else:
                await self._feed(queue, width, limit, scope, tally)
        finally:
            for _ in workers:
                await queue.put(None)
            await asyncio.gather(*workers)
            if unprocessed:
                self.catalog.release(self.opt.worker_id, sorted(unprocessed))
        if not pass_ids and scope is None and self._systemic is None:
            # a deadline that passed during the run is reported in this run
            self._close_overdue(summary)

    def _close_overdue(self, summary: RunSummary) -> None:
        """Settle the passes whose window has closed (their last result in this run,
        if any, is replaced)."""
        expired, gone = self.catalog.close_overdue(self.clock.now())
        for pid in expired:
            log.warning("pass_expired", pass_id=pid)
            summary.add(PassResult(pid, Outcome.EXPIRED, "retention window closed before archival"))
        for pid in gone:
            summary.add(PassResult(pid, Outcome.NO_IMAGES, "image_retention_days is 0"))

    async def _feed(
        self,
        queue: asyncio.Queue[CatalogEntry | None],
        width: int,
        limit: int | None,
        scope: Scope | None,
        tally: _Tally,
    ) -> None:
        """Claim due passes in small batches and queue them. A worker holds at most
        ``width`` leases, the passes it is working on: claiming further ahead would
        leave passes leased but idle while other workers of a shared catalog have
        nothing to do, and their leases ageing. A scope with many pass ids is worked
        through in chunks. While passes are in flight, or a confirming read this run
        scheduled is due soon (``confirm_wait``), the feeder claims again."""
        unprocessed, busy, finished = tally.unprocessed, tally.busy, tally.finished
        fed: set[str] = set()  # ``limit`` counts passes (a confirming read is no new one)
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
                want = room if limit is None else min(room, limit - len(fed))
                part_now = part
                if want <= 0:  # at the limit: only confirming reads of its own passes
                    if not await self._wait_for_confirmations(tally):
                        return
                    part_now, want = _only(part, fed), min(room, len(fed))
                batch = self.catalog.claim(
                    self.opt.worker_id, self.clock.now(), want, self.opt.lease_seconds, part_now
                )
                if not batch:
                    if not await self._wait_for_confirmations(tally):
                        break
                    continue
                busy.update(e.pass_id for e in batch)
                unprocessed.update(e.pass_id for e in batch)  # Counter.update adds
                for entry in batch:
                    if self._stop.is_set():
                        return
                    fed.add(entry.pass_id)
                    await queue.put(entry)

    async def _wait_for_confirmations(self, tally: _Tally) -> bool:
        """Nothing is due: wait for the passes in flight, then sleep until the
        earliest confirming read this run scheduled within ``confirm_wait`` is due.
        False when there is none (or the run stops): the feeder is done."""
        while tally.busy and not tally.confirm_at and not self._stop.is_set():
            tally.finished.clear()
            await tally.finished.wait()
        now = self.clock.now()
        soon = [t for t in tally.confirm_at if t - now <= self.opt.confirm_wait]
        if not soon:
            tally.confirm_at.clear()  # later ones are a later run's
            return False
        target = min(soon)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=(target - now).total_seconds())
        # the reads due by now are claimed next; later ones are waited for after them
        tally.confirm_at[:] = [t for t in tally.confirm_at if t > target]
        return not self._stop.is_set()

    def _parts(self) -> _RunParts:
        return _RunParts(
            requests=asyncio.Semaphore(self.opt.requests),
            bodies=asyncio.Semaphore(self.opt.concurrency),
            uploads=asyncio.Semaphore(self.opt.concurrency),
        )

    # -- one pass -----------------------------------------------------------------

    async def _one(self, entry: CatalogEntry, parts: _RunParts) -> PassResult | None:
        with structlog.contextvars.bound_contextvars(pass_id=entry.pass_id):
            learned = NOTHING_LEARNED
            try:
                result, learned = await self._archive(entry, parts)
            except Exception as exc:
                result = self._failure(entry, exc)
            if result is None:
                return None
            try:
                self._record(entry, result, learned)
            except ArchiverError as exc:
                self._fail_systemic(exc)
                return None
            if result.outcome is Outcome.CONFIRMING:
                return result  # logged as pass_confirming: the pass is not done
            log.info(
                "pass_done",
                outcome=result.outcome.value,
                reason=result.reason,
                image_count=result.images,  # not `images`: the redactor masks that name
                image_bytes=result.image_bytes,
            )
            return result

    async def _archive(
        self, entry: CatalogEntry, parts: _RunParts
    ) -> tuple[PassResult | None, Learned]:
        """Read the pass, then commit it, in three bounded stages.

        Up to ``requests`` passes wait for the API's answer; that holds no memory. A
        pass takes a body slot before its response body is read (the transport waits
        for it after the headers) and keeps it while the images are decoded and
        checked; it takes an upload slot before it lets the body slot go. At most
        ``concurrency`` passes hold a body and as many are uploading, which bounds
        memory; API latency, decoding and S3 latency overlap.
        """
        existing = await self.committer.existing(entry.pass_id)
        if existing is not None:
            return existing, NOTHING_LEARNED
        slot = BodySlot(parts.bodies)
        try:
            read = await self.reader.read(entry, slot, lambda: self._gate(parts))
            if isinstance(read, Staged):
                await parts.uploads.acquire()
        finally:
            slot.release()
        if isinstance(read, Ended):
            if isinstance(read.outcome, PassResult):
                return read.outcome, read.learned
            return self._failure(entry, read.outcome), read.learned
        try:
            return await self._commit(entry, read)
        except Exception as exc:
            return self._failure(entry, exc), read.learned
        finally:
            parts.uploads.release()

    @contextlib.asynccontextmanager
    async def _gate(self, parts: _RunParts) -> AsyncIterator[None]:
        async with parts.requests:
            if self._stop.is_set():
                raise _Abort  # stopped while this pass waited: send nothing more
            yield

    async def _commit(self, entry: CatalogEntry, staged: Staged) -> tuple[PassResult, Learned]:
        """Confirm, or settle: commit every slot any read saw (:mod:`.confirm`)."""
        earlier = confirm.load_seen(entry.seen_slots)
        clash = confirm.conflicts(earlier, staged.images)
        if clash:
            reason = f"{SLOT_CONFLICT}: reads returned different images for {', '.join(clash)}"
            log.error("slot_conflict", slots=clash)
            return PassResult(entry.pass_id, Outcome.FAILED, reason), staged.learned
        seen = confirm.merge(earlier, staged.images, staged.null_slots)
        learned = dataclasses.replace(staged.learned, seen_slots=confirm.dump_seen(seen))
        now = self.clock.now()
        if confirm.needs_confirming(staged.images, staged.null_slots):
            at = confirm.next_read_at(entry, now, staged.learned.deadline, self.opt)
            if at is not None:  # before the deadline, less its margin
                result = self._confirming(entry, staged, at)
                specs = plan_images(self.layout, entry.pass_id, staged.images, age=self.age)
                staged.images.clear()  # the specs hold the bytes now
                await self.committer.stage(entry.pass_id, specs)
                return result, learned
        return await self._settle(entry, staged, seen), learned

    def _confirming(self, entry: CatalogEntry, staged: Staged, at: datetime) -> PassResult:
        what = "no images" if not staged.images else f"{len(staged.null_slots)} slot(s) null"
        reason = f"{what}: confirming read {entry.confirmations + 1} of {self.opt.confirm_reads}"
        log.info("pass_confirming", next_read_at=isoformat(at), null_slots=staged.null_slots)
        return PassResult(entry.pass_id, Outcome.CONFIRMING, reason, next_attempt_at=at)

    async def _settle(self, entry: CatalogEntry, staged: Staged, seen: confirm.Seen) -> PassResult:
        """Commit what every read saw; with no image at all, the absence outcome."""
        pid, reads = entry.pass_id, entry.confirmations + 1
        stored = confirm.earlier_only(seen, staged.images)
        if not staged.images and not stored:
            return confirm.absent_result(
                pid,
                staged.learned,
                field_present=staged.images_field_present,
                reads=reads,
                now=self.clock.now(),
                opt=self.opt,
            )
        earlier = [await self.committer.stored_image(pid, s, v) for s, v in stored.items()]
        present = {img.slot for img in staged.images} | set(stored)
        null = sorted(s for s, v in seen.items() if v is None)
        absent = [s for s in SLOTS if s not in present and s not in null]
        if stored:
            log.info("pass_slots_from_earlier_read", slots=sorted(stored), reads=reads)
        specs = plan_objects(self.layout, pid, staged.images, staged.record, age=self.age)
        staged.images.clear()  # the specs hold the bytes now
        return await self.committer.commit(
            pid,
            run_id=self._run_id,
            facts=staged.facts,
            specs=specs,
            slots=SlotReport(tuple(null), tuple(absent), reads),
            earlier=earlier,
        )

    def _failure(self, entry: CatalogEntry, exc: Exception) -> PassResult | None:
        """The outcome of a pass that raised, or None when the run stops instead."""
        if isinstance(exc, _Abort):
            return None
        if isinstance(exc, ArchiverError):
            if exc.systemic:
                self._fail_systemic(exc)
                return None
            return self._attempt(entry, f"{exc.reason}: {exc}", retryable=exc.retryable)
        # a bug must not take the whole run down, nor retry a pass for ever
        where = errors.where(exc)
        log.error("pass_crashed", error_type=type(exc).__name__, where=where)
        return self._attempt(
            entry, f"internal_error: {type(exc).__name__} at {where}", retryable=True
        )

    def _attempt(self, entry: CatalogEntry, reason: str, *, retryable: bool) -> PassResult:
        """Retry while the pass's attempts last; then, or when retrying cannot help,
        ``failed``."""
        if retryable and entry.attempts + 1 < self.opt.max_attempts:
            return PassResult(entry.pass_id, Outcome.RETRY, reason)
        if retryable:
            reason = f"attempts exhausted ({self.opt.max_attempts}); last: {reason}"
        return PassResult(entry.pass_id, Outcome.FAILED, reason)

    def _fail_systemic(self, exc: ArchiverError) -> None:
        if self._systemic is None:
            self._systemic = f"{exc.reason}: {exc}"
            log.error("run_aborted", reason=exc.reason, error=str(exc))
        self._stop.set()

    def _record(self, entry: CatalogEntry, result: PassResult, learned: Learned) -> None:
        """Record the outcome. Only errors spend the pass's attempts: a not_ready
        re-check counts in ``checks`` (its own backoff), a confirming read in
        ``confirmations``."""
        now = self.clock.now()
        next_at = result.next_attempt_at
        waiting = result.outcome in (Outcome.NOT_READY, Outcome.CONFIRMING)
        if result.outcome is Outcome.RETRY:
            delay = min(self.opt.retry_base * (2**entry.attempts), self.opt.retry_cap)
            next_at = now + delay
        elif result.outcome is Outcome.NOT_READY:
            delay = self.opt.not_ready_recheck * (2 ** min(entry.checks, 32))
            next_at = now + min(delay, self.opt.retry_cap)
        update = result.catalog_update(
            learned,
            next_attempt_at=next_at,
            count_attempt=not waiting,
            count_check=result.outcome is Outcome.NOT_READY,
            count_confirmation=result.outcome is Outcome.CONFIRMING,
        )
        self.catalog.record(update, now)


def _only(scope: Scope | None, pass_ids: set[str]) -> Scope:
    """``scope`` narrowed to ``pass_ids`` (a run at its limit confirms only its own)."""
    ids = tuple(sorted(pass_ids))
    if scope is None:
        return Scope(pass_ids=ids)
    inside = ids if scope.pass_ids is None else tuple(i for i in ids if i in scope.pass_ids)
    return dataclasses.replace(scope, pass_ids=inside)


def _drop_one(claims: Counter[str], pass_id: str) -> None:
    """One claim of ``pass_id`` is over (in place: the feeder and workers share it)."""
    claims[pass_id] -= 1
    if claims[pass_id] <= 0:
        del claims[pass_id]


def _id_chunks(scope: Scope) -> list[Scope]:
    """A scope naming many passes, split into scopes of at most ID_CHUNK ids."""
    ids = scope.pass_ids or ()
    return [
        dataclasses.replace(scope, pass_ids=ids[i : i + ID_CHUNK])
        for i in range(0, len(ids), ID_CHUNK)
    ]


def new_run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"
