"""Syncing the configured ``[[sources]]`` into the catalog, and cipher-key look-ups.

:func:`sync_sources` reads each source and upserts what it knows. A ``sql`` source is
read incrementally from the watermark the catalog keeps for it, chunk by chunk; the
new watermark is stored only after every chunk's upsert has committed, so a sync that
dies halfway is simply repeated from the old watermark (the upsert is idempotent).
The stored watermark never moves backwards and never beyond the current time (a row
stamped in the future would otherwise freeze incremental reading until then).

A failing source (:class:`~archiver.errors.SourceError`: database down, file missing)
is reported and the others still sync: what the catalog already knows can still be
archived. A catalog failure is systemic and propagates.

:class:`SourcePool` keeps one engine per ``sql`` source and answers
``lookup(key_ref, pass_id)`` for passes whose key stays in the source.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import structlog

from archiver.catalog import PassUpsert, UpsertStats
from archiver.clock import Clock, SystemClock, isoformat
from archiver.config import FileSourceSettings, Settings, SqlSourceSettings
from archiver.errors import ConfigError, SourceError
from archiver.sources.file import read_file
from archiver.sources.records import Rejection
from archiver.sources.sql import DEFAULT_CHUNK_ROWS, SqlSource

# How many rejected rows a report lists (it always counts them all).
MAX_REPORTED_REJECTIONS = 20

KeyLookup = Callable[[str, str], str | None]
"""``lookup(key_ref, pass_id)``: the pass's cipher key from the source named by key_ref."""

log = structlog.get_logger("archiver.sources")


class SyncCatalog(Protocol):
    """What syncing needs from the catalog."""

    def upsert(self, passes: Iterable[PassUpsert]) -> UpsertStats: ...

    def get_watermark(self, source: str) -> datetime | None: ...

    def set_watermark(self, source: str, value: datetime) -> None: ...


@dataclass(frozen=True, slots=True)
class SourceReport:
    """What syncing one source did. ``error`` is set when the source failed."""

    name: str
    kind: str
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejections: tuple[Rejection, ...] = ()
    watermark_before: datetime | None = None
    watermark_after: datetime | None = None
    error: str | None = None
    error_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "read": self.read,
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "rejected": self.rejected,
            "rejections": [{"row": r.row, "reason": r.reason} for r in self.rejections],
            "watermark_before": _iso(self.watermark_before),
            "watermark_after": _iso(self.watermark_after),
            "error": self.error,
            "error_reason": self.error_reason,
        }


def _iso(ts: datetime | None) -> str | None:
    return isoformat(ts) if ts is not None else None


@dataclass
class _Tally:
    read: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)

    def add(self, stats: UpsertStats, rejected: list[Rejection], read: int) -> None:
        self.read += read
        self.added += stats.added
        self.updated += stats.updated
        self.unchanged += stats.unchanged
        self.rejected += len(rejected)
        room = MAX_REPORTED_REJECTIONS - len(self.rejections)
        self.rejections.extend(rejected[: max(room, 0)])


class SourcePool:
    """The configured ``sql`` sources, each opened once (one engine) and shared.

    Thread-safe. Callable as a :data:`KeyLookup`. Close it when done.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = {s.name: s for s in settings.sources}
        self._open: dict[str, SqlSource] = {}
        self._lock = threading.Lock()

    def sql(self, name: str) -> SqlSource:
        """The open :class:`SqlSource` named ``name``."""
        with self._lock:
            source = self._open.get(name)
            if source is not None:
                return source
            settings = self._settings.get(name)
            if not isinstance(settings, SqlSourceSettings):
                raise SourceError("is not a configured sql source", source=name, retryable=False)
            source = self._open[name] = SqlSource(settings)
            return source

    def lookup_key(self, key_ref: str, pass_id: str) -> str | None:
        """The cipher key of ``pass_id`` from the source ``key_ref`` names (blocking I/O)."""
        return self.sql(key_ref).lookup_key(pass_id)

    __call__ = lookup_key

    def close(self) -> None:
        with self._lock:
            sources, self._open = list(self._open.values()), {}
        for source in sources:
            source.close()

    def __enter__(self) -> SourcePool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def key_lookup(settings: Settings) -> SourcePool:
    """A :data:`KeyLookup` over the configured sources (call ``.close()`` when done)."""
    return SourcePool(settings)


def sync_sources(
    settings: Settings,
    catalog: SyncCatalog,
    *,
    only: str | None = None,
    clock: Clock | None = None,
    pool: SourcePool | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> list[SourceReport]:
    """Sync every configured source (or only the one named) into the catalog.

    Raises :class:`ConfigError` if ``only`` names no source, and lets
    :class:`~archiver.errors.CatalogError` through; a failing source is reported in
    its :class:`SourceReport` instead.
    """
    sources = settings.sources
    if only is not None:
        sources = tuple(s for s in sources if s.name == only)
        if not sources:
            known = ", ".join(s.name for s in settings.sources) or "none configured"
            raise ConfigError(f"no source named {only!r} (known: {known})", key="sources")
    clock = clock or SystemClock()
    own_pool = pool is None
    pool = pool or SourcePool(settings)
    reports: list[SourceReport] = []
    try:
        for src in sources:
            if isinstance(src, SqlSourceSettings):
                report = _sync_sql(pool, src.name, catalog, clock, chunk_rows)
            else:
                report = _sync_file(src, catalog)
            _log(report)
            reports.append(report)
    finally:
        if own_pool:
            pool.close()
    return reports


def _sync_sql(
    pool: SourcePool, name: str, catalog: SyncCatalog, clock: Clock, chunk_rows: int
) -> SourceReport:
    before = catalog.get_watermark(name)
    tally = _Tally()
    high: datetime | None = None
    try:
        source = pool.sql(name)
        with closing(source.iter_changes(before, chunk_rows=chunk_rows)) as batches:
            for batch in batches:
                stats = catalog.upsert(batch.items)
                tally.add(stats, batch.rejected, batch.read)
                if batch.new_watermark is not None:
                    high = batch.new_watermark if high is None else max(high, batch.new_watermark)
    except SourceError as exc:
        return _report(name, "sql", tally, before, before, exc)
    after = before
    if high is not None:
        candidate = min(high, clock.now())
        if before is None or candidate > before:
            catalog.set_watermark(name, candidate)
            after = candidate
    return _report(name, "sql", tally, before, after)


def _sync_file(src: FileSourceSettings, catalog: SyncCatalog) -> SourceReport:
    tally = _Tally()
    try:
        try:
            good, bad = read_file(src.path, source=src.name, fmt=src.format)
        except OSError as exc:
            raise SourceError(f"cannot read {src.path} ({exc.strerror})", source=src.name) from None
        except UnicodeDecodeError:
            raise SourceError(
                f"{src.path} is not UTF-8 text", source=src.name, retryable=False
            ) from None
    except SourceError as exc:
        return _report(src.name, "file", tally, None, None, exc)
    stats = catalog.upsert(good)
    read = len(good) + len(bad)
    tally.add(stats, [Rejection(b.line, b.reason) for b in bad], read)
    return _report(src.name, "file", tally, None, None)


def _report(
    name: str,
    kind: str,
    tally: _Tally,
    before: datetime | None,
    after: datetime | None,
    error: SourceError | None = None,
) -> SourceReport:
    return SourceReport(
        name=name,
        kind=kind,
        read=tally.read,
        added=tally.added,
        updated=tally.updated,
        unchanged=tally.unchanged,
        rejected=tally.rejected,
        rejections=tuple(tally.rejections),
        watermark_before=before,
        watermark_after=after,
        error=str(error) if error else None,
        error_reason=error.reason if error else None,
    )


def _log(report: SourceReport) -> None:
    fields: dict[str, Any] = {
        "source": report.name,
        "kind": report.kind,
        "read": report.read,
        "added": report.added,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "rejected": report.rejected,
        "watermark_before": _iso(report.watermark_before),
        "watermark_after": _iso(report.watermark_after),
    }
    if report.rejections:
        fields["rejected_rows"] = [f"{r.row}: {r.reason}" for r in report.rejections]
    if report.error is not None:
        log.warning("source_failed", reason=report.error_reason, error=report.error, **fields)
    else:
        log.info("source_synced", **fields)
