"""``idpass-archiver catalog rebuild``: reconstruct the catalog from the S3 manifests.

S3 is the source of truth: a pass is archived exactly when its manifest exists. This
lists every ``passes/*/manifest.json``, checks its format (and its signature when a
key is given), and records the pass as ``archived`` with its manifest key and hash,
completion time, retention, deadline and image totals. Passes the catalog knows but
S3 has no manifest for are left as they are (they still have work left).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from archiver.catalog import PassUpsert
from archiver.catalog.sql import SqlCatalog
from archiver.core.format import Layout, PassManifest, signature_key
from archiver.core.signing import Verifier
from archiver.errors import FormatError, StoreError
from archiver.results import Learned, PassResult
from archiver.store import ObjectStore


@dataclass
class RebuildReport:
    manifests: int = 0
    recorded: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "manifests": self.manifests,
            "recorded": self.recorded,
            "rejected": [{"key": k, "reason": r} for k, r in self.rejected],
        }


def rebuild(
    store: ObjectStore,
    layout: Layout,
    catalog: SqlCatalog,
    now: datetime,
    *,
    trusted: Iterable[Verifier] = (),
) -> RebuildReport:
    report = RebuildReport()
    verifiers = list(trusted)
    for info in store.list(layout.passes_root()):
        if layout.manifest_pass_id(info.key) is None:
            continue
        report.manifests += 1
        try:
            data, manifest = _read(store, info.key, verifiers)
        except (StoreError, FormatError) as exc:
            report.rejected.append((info.key, exc.message))
            continue
        if layout.manifest(manifest.pass_id) != info.key:
            report.rejected.append((info.key, "manifest names another pass"))
            continue
        _record(catalog, manifest, info.key, data, now)
        report.recorded += 1
    return report


def _read(store: ObjectStore, key: str, verifiers: list[Verifier]) -> tuple[bytes, PassManifest]:
    data = store.get(key)
    manifest = PassManifest.parse(data)
    if verifiers:
        sig = store.get(signature_key(key))
        if not any(v.verify(data, sig) for v in verifiers):
            raise FormatError("signature does not verify")
    return data, manifest


def _record(
    catalog: SqlCatalog, manifest: PassManifest, key: str, data: bytes, now: datetime
) -> None:
    p = manifest.facts
    retention = p.image_retention_days
    catalog.upsert([PassUpsert(manifest.pass_id, "rebuild", None, p.completed_at, retention)])
    result = PassResult.archived_by(manifest, key, data, reason="rebuilt from its manifest")
    update = result.catalog_update(Learned.from_facts(p), count_attempt=False)
    catalog.record(update, now)
