"""Fixtures to run the real pipeline against the real sandbox over HTTP."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from archiver.catalog.keys import KeySealer, new_catalog_secret
from archiver.catalog.sql import SqlCatalog
from archiver.clock import Clock, ManualClock, SystemClock, isoformat
from archiver.core.format import Layout
from archiver.idpass.client import IdPassClient
from archiver.logging import configure
from archiver.metrics import write_textfile
from archiver.pipeline import DetailsReader, Pipeline, PipelineOptions
from archiver.results import RunSummary
from archiver.sandbox import SandboxServer
from archiver.sources.file import read_file
from archiver.store import ObjectStore
from archiver.store.memory import MemoryStore
from tests.fixtures.cli import TEST_SIGNER
from tests.fixtures.pii import PiiWatch
from tests.helpers import manifest_doc


@dataclass
class Harness:
    """A sandbox, a catalog and a store; seeds passes, imports them, runs cycles."""

    sandbox: SandboxServer
    http: httpx.Client
    catalog: SqlCatalog
    store: ObjectStore
    layout: Layout
    tmp: Any
    logs: io.StringIO
    clock: Clock = field(default_factory=SystemClock)
    summaries: list[RunSummary] = field(default_factory=list)
    options: PipelineOptions = field(
        # confirming reads at once: a pass with a slot null settles in the same run
        default_factory=lambda: PipelineOptions(
            concurrency=4, kms_key_id="archive-key", confirm_spacing=timedelta(0)
        )
    )

    def seed(self, count: int = 1, **spec: Any) -> list[dict[str, Any]]:
        r = self.http.post("/_sandbox/passes", json={"count": count, **spec})
        assert r.status_code == 201, r.text
        passes: list[dict[str, Any]] = r.json()["passes"]
        return passes

    def import_ledger(self) -> int:
        path = self.tmp / "ledger.jsonl"
        path.write_bytes(self.http.get("/_sandbox/ledger").content)
        good, bad = read_file(path)
        assert bad == []
        return self.catalog.upsert(good).added

    def image(self, pass_id: str, slot: str) -> bytes:
        r = self.http.get(f"/_sandbox/passes/{pass_id}/images/{slot}")
        assert r.status_code == 200
        return r.content

    def run(
        self,
        *,
        token: str | None = None,
        wrap: Callable[[DetailsReader], DetailsReader] | None = None,
        **kwargs: Any,
    ) -> RunSummary:
        """One cycle through the real client; ``token`` overrides the sandbox's;
        ``wrap`` puts a reader around the client (one that alters real answers)."""

        async def go() -> RunSummary:
            with ThreadPoolExecutor(8) as pool:
                async with IdPassClient(
                    self.sandbox.base_url,
                    token or self.sandbox.token,
                    max_connections=self.options.requests,  # as the app does
                ) as api:
                    pipeline = Pipeline(
                        api=wrap(api) if wrap is not None else api,
                        store=self.store,
                        catalog=self.catalog,
                        layout=self.layout,
                        options=self.options,
                        clock=self.clock,
                        executor=pool,
                        signer=TEST_SIGNER,
                    )
                    return await pipeline.run(**kwargs)

        summary = asyncio.run(go())
        self.summaries.append(summary)
        return summary


def _harness(sandbox_http, sandbox_reset, tmp_path, store, pii_watch) -> Iterator[Harness]:
    logs = io.StringIO()
    configure("debug", "json", logs)
    catalog = SqlCatalog(
        f"sqlite:///{tmp_path / 'catalog.db'}", sealer=KeySealer(new_catalog_secret())
    )
    h = Harness(sandbox_reset, sandbox_http, catalog, store, Layout("test"), tmp_path, logs)
    try:
        yield h
        _report_outputs(h, pii_watch)
    finally:
        catalog.close()


def _report_outputs(h: Harness, watch: PiiWatch) -> None:
    """Hand everything the archiver produced, except the encrypted record and image
    objects (where personal data belongs), to the session's PII watch."""
    where = f"{h.tmp.name}"
    watch.output(f"{where}/logs", h.logs.getvalue())
    for n, summary in enumerate(h.summaries):
        watch.output(f"{where}/summary", orjson.dumps(summary.to_json()))
        prom = h.tmp / f"metrics-{n}.prom"
        write_textfile(summary, prom, labels={})
        watch.output(f"{where}/metrics", prom.read_text())
    for info in h.store.list(""):
        watch.output(f"{where}/key", info.key)
        if info.key.endswith(("manifest.json", "SHA256SUMS")):
            data = h.store.get(info.key)
            watch.output(f"{where}/{info.key.rsplit('/', 1)[-1]}", data)
            if info.key.endswith("manifest.json"):
                # the pipeline writes manifests without validating them (a hot path):
                # every one any pipeline test wrote must match the published schema
                manifest_doc(data)
    for entry in h.catalog.all():
        watch.output(f"{where}/catalog_reason", entry.last_reason or "")


@pytest.fixture
def harness(sandbox_http, sandbox_reset, tmp_path, pii_watch) -> Iterator[Harness]:
    """The pipeline over the real sandbox with an in-memory store."""
    store = MemoryStore(kms_key_id="archive-key")
    yield from _harness(sandbox_http, sandbox_reset, tmp_path, store, pii_watch)


@pytest.fixture
def s3_harness(sandbox_http, sandbox_reset, tmp_path, s3_store, pii_watch) -> Iterator[Harness]:
    """The pipeline over the real sandbox with the real SeaweedFS."""
    yield from _harness(sandbox_http, sandbox_reset, tmp_path, s3_store, pii_watch)


@pytest.fixture
def travel(harness: Harness) -> Harness:
    """The harness on a manual clock, at noon UTC today, that also drives the sandbox's
    clock (noon: a day of travel never crosses two UTC midnights). ``advance(delta)``
    moves both clocks together."""
    start = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    harness.clock = ManualClock(start)
    harness.http.post("/_sandbox/clock", json={"set": isoformat(start)})

    def advance(delta: timedelta) -> None:
        now = harness.clock.advance(delta)
        r = harness.http.post("/_sandbox/clock", json={"set": isoformat(now)})
        assert r.status_code == 200, r.text

    harness.advance = advance  # type: ignore[attr-defined]
    return harness
