"""The bad-input table: every case gets a specific outcome and reason, nothing is
archived that should not be, and the run carries on.

The API answers are crafted per pass and served through ``httpx.MockTransport`` (the
pipeline, catalog and store are real); the base document is a real sandbox response.
The README's troubleshooting table lists the same cases and outcomes.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from archiver.catalog import Outcome, PassUpsert
from archiver.catalog.keys import KeySealer, new_catalog_secret
from archiver.catalog.sql import SqlCatalog
from archiver.clock import SystemClock, isoformat
from archiver.core.format import Layout
from archiver.idpass.client import IdPassClient
from archiver.pipeline import Pipeline, PipelineOptions
from archiver.results import EXIT_SYSTEMIC
from archiver.sources.file import read_file
from archiver.store.memory import MemoryStore
from tests.fixtures.cli import TEST_SIGNER

NOW = datetime.now(UTC)


def _png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _json(doc, status=200):
    return httpx.Response(status, json=doc)


# name -> (how to answer, expected outcome, fragment of the recorded reason)
def _cases(base: dict, jpeg_b64: str):
    def doc(**changes):
        d = copy.deepcopy(base)
        for k, v in changes.items():
            if v is _DROP:
                d.pop(k, None)
            else:
                d[k] = v
        return d

    def cfg(**changes):
        c = dict(base["config"])
        c.update(changes)
        return c

    raw = base64.b64decode(jpeg_b64)
    return {
        "invalid_base64": (
            _json(doc(images={"probe": "@@not-base64@@"})),
            Outcome.FAILED,
            "not valid Base64",
        ),
        "truncated_jpeg": (
            _json(doc(images={"probe": base64.b64encode(raw[: len(raw) // 2]).decode()})),
            Outcome.FAILED,
            "end marker",
        ),
        "png_not_jpeg": (_json(doc(images={"probe": _png()})), Outcome.FAILED, "PNG"),
        "empty_string": (_json(doc(images={"probe": ""})), Outcome.FAILED, "empty"),
        "oversize_image": (
            _json(doc(images={"probe": base64.b64encode(raw * 40).decode()})),
            Outcome.FAILED,
            "size limit",
        ),
        "unknown_slot_kept": (
            _json(doc(images={"probe": jpeg_b64, "selfie_extra": jpeg_b64})),
            Outcome.ARCHIVED,
            None,
        ),
        "unsafe_slot_name": (
            _json(doc(images={"../../etc": jpeg_b64})),
            Outcome.FAILED,
            "safe key segment",
        ),
        # an answer without images inside the window is read again before it settles
        "images_key_missing": (
            _json(doc(images=_DROP)),
            Outcome.IMAGES_ABSENT,
            "no images field in 3 read(s)",
        ),
        "status_in_progress": (
            _json(doc(status="in_progress", completed_at=None)),
            Outcome.NOT_READY,
            "in_progress",
        ),
        "status_cancelled": (
            _json(doc(status="cancelled", images={})),
            Outcome.SKIPPED,
            "cancelled",
        ),
        "retention_zero": (
            _json(doc(config=cfg(image_retention_days=0), images={})),
            Outcome.NO_IMAGES,
            "is 0",
        ),
        "window_expired": (
            _json(
                doc(
                    completed_at=isoformat(NOW - timedelta(days=9)),
                    config=cfg(image_retention_days=2),
                    images={},
                )
            ),
            Outcome.EXPIRED,
            "window closed",
        ),
        "completed_at_missing": (_json(doc(completed_at=None)), Outcome.FAILED, "no completed_at"),
        "malformed_timestamp": (
            _json(doc(completed_at="last Tuesday")),
            Outcome.RETRY,
            "completed_at",
        ),
        "http_404": (
            _json({"error": {"code": "pass_not_found"}}, 404),
            Outcome.FAILED,
            "api_not_found",
        ),
        "http_400": (
            _json({"error": {"code": "invalid_id"}}, 400),
            Outcome.FAILED,
            "api_bad_request",
        ),
        "html_502": (
            httpx.Response(
                502, text="<html><h1>Bad Gateway</h1></html>", headers={"content-type": "text/html"}
            ),
            Outcome.RETRY,
            "api_server_error",
        ),
        "invalid_json": (
            httpx.Response(
                200, content=b'{"id": "x", "status": ', headers={"content-type": "application/json"}
            ),
            Outcome.RETRY,
            "not valid JSON",
        ),
        "wrong_content_type": (
            httpx.Response(
                200, content=json.dumps(doc()).encode(), headers={"content-type": "text/plain"}
            ),
            Outcome.RETRY,
            "expected JSON",
        ),
        "body_cut_off": ("cut", Outcome.RETRY, "api_transport_error"),
    }


_DROP = object()


def _run(handler, catalog, store, options, **run_args):
    """One pipeline run against answers from ``handler`` (no network)."""

    async def go():
        with ThreadPoolExecutor(4) as pool:
            async with IdPassClient(
                "http://api.test", "t", transport=httpx.MockTransport(handler)
            ) as api:
                return await Pipeline(
                    api=api,
                    store=store,
                    catalog=catalog,
                    layout=Layout("t"),
                    options=options,
                    clock=SystemClock(),
                    executor=pool,
                    signer=TEST_SIGNER,
                ).run(**run_args)

    return asyncio.run(go())


@pytest.fixture
def base_doc(sandbox_http):
    """A real details document (plaintext, one image) from the sandbox."""
    [p] = sandbox_http.post(
        "/_sandbox/passes", json={"image_retention_days": 30, "slots": ["probe"]}
    ).json()["passes"]
    r = sandbox_http.post(
        "/idpass/details",
        json={"id": p["id"], "cipher_key": p["cipher_key"], "return_images": True},
    )
    return r.json()


def test_bad_input_table(base_doc, tmp_path, pii_watch):
    """Each bad input gets its own outcome and reason; only the valid pass is archived."""
    jpeg = base_doc["images"]["probe"]
    cases = _cases(base_doc, jpeg)
    ids = {name: str(uuid.uuid4()) for name in cases}
    by_id = {pid: name for name, pid in ids.items()}

    def handler(request: httpx.Request) -> httpx.Response:
        pid = json.loads(request.content)["id"]
        answer = cases[by_id[pid]][0]
        if answer == "cut":
            raise httpx.RemoteProtocolError("peer closed connection mid-body", request=request)
        if answer.status_code == 200 and answer.headers.get("content-type") == "application/json":
            try:
                doc = json.loads(answer.content)
            except ValueError:
                return answer
            if isinstance(doc, dict) and "status" in doc:
                doc["id"] = pid
                return httpx.Response(200, json=doc)
        return answer

    catalog = SqlCatalog(f"sqlite:///{tmp_path / 'c.db'}", sealer=KeySealer(new_catalog_secret()))
    catalog.upsert(PassUpsert(pid, "test") for pid in ids.values())
    store = MemoryStore(kms_key_id="k")
    options = PipelineOptions(
        concurrency=4,
        kms_key_id="k",
        max_image_bytes=len(base64.b64decode(jpeg)) * 10,
        confirm_spacing=timedelta(0),
    )

    summary = _run(handler, catalog, store, options)
    got = {by_id[r.pass_id]: r for r in summary.results}
    assert set(got) == set(cases), "the run carried on through every case"
    for name, (_, outcome, fragment) in cases.items():
        assert got[name].outcome is outcome, f"{name}: {got[name].outcome} ({got[name].reason})"
        if fragment is not None:
            assert fragment in (got[name].reason or ""), f"{name}: {got[name].reason}"
        archived = store.head(Layout("t").manifest(ids[name])) is not None
        assert archived is (outcome is Outcome.ARCHIVED), name
        entry = catalog.get(ids[name])
        assert entry.state is outcome
        pii_watch.output(f"bad-input {name} reason", entry.last_reason or "")
    kept = store.head(Layout("t").image(ids["unknown_slot_kept"], "selfie_extra"))
    assert kept is not None
    assert len(cases) >= 20
    catalog.close()


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_stops_the_run(status, tmp_path):
    """401 and 403 stop the run as systemic: nothing is recorded against the passes."""
    catalog = SqlCatalog(f"sqlite:///{tmp_path / 'c.db'}")
    ids = [str(uuid.uuid4()) for _ in range(5)]
    catalog.upsert(PassUpsert(pid, "test") for pid in ids)
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, json={"error": {"code": "unauthorized"}})

    options = PipelineOptions(concurrency=1, requests=1, kms_key_id="k")
    summary = _run(handler, catalog, MemoryStore(kms_key_id="k"), options)
    assert summary.exit_code == EXIT_SYSTEMIC and "api_auth_error" in summary.systemic_error
    assert len(calls) == 1  # it stopped instead of hammering the API
    assert catalog.counts() == {"pending": 5}
    catalog.close()


def test_bad_source_lines(tmp_path):
    """A non-UUID id and a duplicate id in a source get line-numbered reasons."""
    pid = str(uuid.uuid4())
    f = tmp_path / "x.jsonl"
    f.write_text(f'{{"id": "{pid}"}}\n{{"id": "PASS-0001"}}\n{{"id": "{pid}"}}\n')
    good, bad = read_file(f)
    assert [g.pass_id for g in good] == [pid]
    assert [(b.line, b.reason) for b in bad] == [
        (2, "id is not a UUID"),
        (3, "duplicate id (first occurrence kept)"),
    ]


def _bomb_jpeg(jpeg: bytes) -> bytes:
    """A real JPEG whose frame header declares 65535 x 65535 pixels: Pillow refuses
    to open it (DecompressionBombError), an exception no check of ours expects."""
    at = jpeg.index(b"\xff\xc0")  # SOF0: length (2), precision (1), height, width
    return jpeg[: at + 5] + b"\xff\xff\xff\xff" + jpeg[at + 9 :]


def test_an_unexpected_error_is_retried_only_while_attempts_last(base_doc, tmp_path):
    """A bug met on one pass (here Pillow's DecompressionBombError) is retried like
    any retryable error, then ends ``failed`` once ``max_attempts`` are spent: it is
    not re-downloaded every run until the window closes."""
    bomb = base64.b64encode(_bomb_jpeg(base64.b64decode(base_doc["images"]["probe"])))
    pid = str(uuid.uuid4())
    doc = copy.deepcopy(base_doc)
    doc.update(id=pid, images={"probe": bomb.decode()})
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(200, json=doc)

    catalog = SqlCatalog(f"sqlite:///{tmp_path / 'c.db'}")
    catalog.upsert([PassUpsert(pid, "test")])
    store = MemoryStore(kms_key_id="k")

    options = PipelineOptions(kms_key_id="k", max_attempts=3)
    outcomes = []
    for _ in range(4):
        [result] = _run(handler, catalog, store, options, pass_ids=[pid]).results
        outcomes.append(result.outcome)
    assert outcomes[:3] == [Outcome.RETRY, Outcome.RETRY, Outcome.FAILED]
    assert "internal_error: DecompressionBombError" in result.reason
    assert "attempts exhausted (3)" in catalog.get(pid).last_reason
    assert catalog.get(pid).state is Outcome.FAILED
    assert not list(store.list("t/passes/"))
    catalog.close()
