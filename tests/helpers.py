"""Small helpers shared by tests (no fixtures here: those live in tests/fixtures/)."""

from __future__ import annotations

import hashlib
import io
import random
from html.parser import HTMLParser
from typing import Any

import orjson
from PIL import Image

from archiver.core.format import PassManifest, RunManifest


def make_jpeg(width: int = 64, height: int = 48, seed: int = 0, quality: int = 85) -> bytes:
    """A small, real baseline JPEG."""
    rng = random.Random(seed)
    img = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_png(width: int = 16, height: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


class ReportPage(HTMLParser):
    """The elements of an HTML report (as rendered, or as a browser dumped its DOM): each
    start tag with its attributes, in document order, and the page's text."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str]]] = []
        self._text: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    @property
    def text(self) -> str:
        return " ".join(" ".join(self._text).split())

    def by_id(self, element_id: str) -> dict[str, str]:
        [found] = [a for _, a in self.elements if a.get("id") == element_id]
        return found

    def value(self, element_id: str) -> int:
        return int(self.by_id(element_id)["data-value"])

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [
            a
            for t, a in self.elements
            if t == tag and (cls is None or cls in a.get("class", "").split())
        ]


def manifest_doc(data: bytes) -> dict[str, Any]:
    """A stored pass manifest as a plain dict, once the archiver's reader accepts it
    (so a test reading fields by name also proves the manifest valid)."""
    PassManifest.parse(data)
    doc: dict[str, Any] = orjson.loads(data)
    return doc


def signed_run_manifests(client: Any, bucket: str, prefix: str, verifier: Any) -> list[RunManifest]:
    """Every ``{prefix}/runs/**.json`` in the bucket, as the auditor recipe's step 6
    reads it: each must carry a valid detached signature by ``verifier`` and parse as
    a run manifest of a published version."""
    pages = client.get_paginator("list_objects_v2")
    keys = [
        o["Key"]
        for page in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/runs/")
        for o in page.get("Contents", [])
        if o["Key"].endswith(".json")
    ]
    runs = []
    for key in keys:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        sig = client.get_object(Bucket=bucket, Key=key + ".sig")["Body"].read()
        assert verifier.verify(data, sig), f"run manifest {key} is not signed by the key"
        runs.append(RunManifest.parse(data))
    return runs


def unlisted_manifests(client: Any, bucket: str, prefix: str, verifier: Any) -> list[str]:
    """The pass manifests in the bucket (by key and SHA-256) that no signed run
    manifest lists: empty when every committed pass is in the audit trail."""
    listed = {
        (p.manifest_key, p.manifest_sha256)
        for run in signed_run_manifests(client, bucket, prefix, verifier)
        for p in run.passes
    }
    pages = client.get_paginator("list_objects_v2")
    missing = []
    for page in pages.paginate(Bucket=bucket, Prefix=f"{prefix}/passes/"):
        for o in page.get("Contents", []):
            if not o["Key"].endswith("/manifest.json"):
                continue
            data = client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            if (o["Key"], hashlib.sha256(data).hexdigest()) not in listed:
                missing.append(o["Key"])
    return missing
