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
from typing import Any

import sqlalchemy as sa

from archiver.catalog import Scope
from archiver.catalog.keys import KeySealer
from archiver.catalog.sql import SqlCatalog
from archiver.clock import Clock, SystemClock
from archiver.config import Settings
from archiver.core.layout import Layout
from archiver.errors import AlreadyRunning, ConfigError
from archiver.idpass.client import IdPassClient
from archiver.pipeline import DetailsReader, PassResult, Pipeline, PipelineOptions, RunSummary
from archiver.ratelimit import AsyncRateLimiter, RateLimitedReader
from archiver.scheduler import make_trigger
from archiver.store import ObjectStore


def open_catalog(settings: Settings) -> SqlCatalog:
    key = settings.catalog.key
    sealer = KeySealer(key.get_secret_value()) if key is not None else None
    return SqlCatalog(settings.catalog.url, sealer=sealer)


def open_store(settings: Settings, credentials: tuple[str, str] | None = None) -> ObjectStore:
    from archiver.store.s3 import S3Store

    return S3Store(settings.storage, credentials=credentials)


def default_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}"


def pipeline_options(settings: Settings) -> PipelineOptions:
    p = settings.pipeline
    return PipelineOptions(
        concurrency=p.concurrency,
        max_image_bytes=p.max_image_bytes,
        archive_statuses=p.archive_statuses,
        decryption=p.decryption,
        batch_size=p.batch_size,
        max_attempts=p.max_attempts,
        retry_base=timedelta(seconds=p.retry_base_seconds),
        retry_cap=timedelta(seconds=p.retry_cap_seconds),
        not_ready_recheck=timedelta(seconds=p.not_ready_recheck_seconds),
        not_ready_margin=timedelta(hours=p.not_ready_margin_hours),
        sse=settings.storage.sse,
        kms_key_id=settings.storage.kms_key_id,
        worker_id=settings.catalog.worker_id or default_worker_id(),
        lease_seconds=settings.catalog.lease_seconds,
    )


@dataclass
class Runtime:
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
    catalog = open_catalog(settings)
    try:
        yield Runtime(settings, catalog, open_store(settings, credentials), clock or SystemClock())
    finally:
        catalog.close()


def next_run_after(settings: Settings, now: datetime) -> datetime | None:
    """When the configured schedule next fires after ``now`` (UTC)."""
    trigger = make_trigger(settings.schedule.cron, settings.schedule.timezone)
    fire: datetime | None = trigger.get_next_fire_time(None, now)
    return fire.astimezone(UTC) if fire is not None else None


@contextmanager
def run_lock(settings: Settings) -> Iterator[None]:
    """On an SQLite catalog only one run may go at a time: hold an exclusive lock on a
    file beside the database. PostgreSQL catalogs share work through leases instead."""
    url = sa.make_url(settings.catalog.url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    path = Path(url.database + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(
                f"another run holds the catalog lock ({path}); this run does nothing and exits"
            ) from None
        yield
    finally:
        os.close(fd)


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
) -> RunSummary:
    """One archival cycle against the configured API and bucket.

    SIGTERM/SIGINT (when called from the main thread) or ``stop`` being set: no new
    passes start, those in flight get ``schedule.stop_grace_seconds`` to finish, and
    the run is recorded as stopped early.
    """
    s = rt.settings
    token = s.api.token
    if token is None and not dry_run:
        raise ConfigError(
            "no API token: set IDPASS_ARCHIVER_API_TOKEN or api.token_file", key="api.token"
        )
    stop = stop or threading.Event()
    options = dataclasses.replace(pipeline_options(s), next_run=next_run_after(s, rt.clock.now()))
    rate = s.api.requests_per_second if requests_per_second is None else requests_per_second
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        with ThreadPoolExecutor(
            max_workers=s.storage.upload_threads, thread_name_prefix="archiver-io"
        ) as executor:
            async with IdPassClient(
                s.api.base_url,
                token.get_secret_value() if token else "",
                connect_timeout=s.api.connect_timeout_seconds,
                read_timeout=s.api.read_timeout_seconds,
                max_connections=max(s.api.concurrency, s.pipeline.concurrency),
                verify_tls=s.api.verify_tls,
            ) as client:
                api: DetailsReader = client
                if rate:
                    api = RateLimitedReader(client, AsyncRateLimiter(rate))
                pipeline = Pipeline(
                    api=api,
                    store=rt.store,
                    catalog=rt.catalog,
                    layout=Layout(s.storage.clean_prefix),
                    options=options,
                    clock=rt.clock,
                    executor=executor,
                )
                pipeline.on_result = on_result
                pipeline.key_lookup = key_lookup

                async def watch() -> None:
                    while not stop.is_set():
                        await asyncio.sleep(0.1)
                    pipeline.request_stop(grace=s.schedule.stop_grace_seconds)

                watcher = asyncio.create_task(watch())
                try:
                    summary = await pipeline.run(
                        limit=limit, pass_ids=pass_ids, dry_run=dry_run, scope=scope
                    )
                finally:
                    watcher.cancel()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    if not dry_run:
        assert summary.finished_at is not None
        rt.catalog.record_run(
            summary.run_id,
            summary.started_at,
            summary.finished_at,
            summary.exit_code,
            summary.to_json(),
        )
    return summary


def run_cycle_sync(rt: Runtime, **kwargs: Any) -> RunSummary:
    return asyncio.run(run_cycle(rt, **kwargs))
