"""Wiring: turn settings into the boundaries and a pipeline. The CLI and the demo use it."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

from archiver.catalog.keys import KeySealer
from archiver.catalog.sql import SqlCatalog
from archiver.clock import Clock, SystemClock
from archiver.config import Settings
from archiver.core.layout import Layout
from archiver.errors import ConfigError
from archiver.idpass.client import IdPassClient
from archiver.pipeline import Pipeline, PipelineOptions, RunSummary
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


async def run_cycle(
    rt: Runtime,
    *,
    limit: int | None = None,
    pass_ids: Sequence[str] | None = None,
    dry_run: bool = False,
) -> RunSummary:
    """One archival cycle against the configured API and bucket."""
    s = rt.settings
    token = s.api.token
    if token is None and not dry_run:
        raise ConfigError(
            "no API token: set IDPASS_ARCHIVER_API_TOKEN or api.token_file", key="api.token"
        )
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
        ) as api:
            pipeline = Pipeline(
                api=api,
                store=rt.store,
                catalog=rt.catalog,
                layout=Layout(s.storage.clean_prefix),
                options=pipeline_options(s),
                clock=rt.clock,
                executor=executor,
            )
            summary = await pipeline.run(limit=limit, pass_ids=pass_ids, dry_run=dry_run)
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


def run_cycle_sync(rt: Runtime, **kwargs: object) -> RunSummary:
    return asyncio.run(run_cycle(rt, **kwargs))  # type: ignore[arg-type]
