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

from archiver.catalog import Outcome, OutcomeUpdate, PassUpsert
from archiver.catalog.sql import SqlCatalog
from archiver.core import manifest as mf
from archiver.core.images import sha256_hex
from archiver.core.layout import MANIFEST, Layout
from archiver.core.signing import Verifier
from archiver.errors import StoreError
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


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


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
    root = layout.passes_root()
    for info in store.list(root):
        if not info.key.endswith("/" + MANIFEST):
            continue
        report.manifests += 1
        key = info.key
        try:
            data = store.get(key)
            doc = mf.parse_manifest(data)
            if verifiers:
                sig = store.get(key + ".sig")
                if not any(v.verify(data, sig) for v in verifiers):
                    raise mf.ManifestFormatError("signature does not verify")
        except (StoreError, mf.ManifestFormatError) as exc:
            report.rejected.append((key, str(exc)))
            continue
        pid = doc["pass_id"]
        if layout.manifest(pid) != key:
            report.rejected.append((key, "manifest names another pass"))
            continue
        p = doc["pass"]
        catalog.upsert(
            [
                PassUpsert(
                    pass_id=pid,
                    source="rebuild",
                    completed_at=_ts(p["completed_at"]),
                    image_retention_days=p["image_retention_days"],
                )
            ]
        )
        catalog.record(
            OutcomeUpdate(
                pass_id=pid,
                outcome=Outcome.ARCHIVED,
                reason="rebuilt from its manifest",
                api_status=p["status"],
                completed_at=_ts(p["completed_at"]),
                image_retention_days=p["image_retention_days"],
                deadline=_ts(p["images_deadline"]),
                manifest_key=key,
                manifest_sha256=sha256_hex(data),
                image_count=doc["image_count"],
                image_bytes=doc["image_bytes"],
                count_attempt=False,
            ),
            now,
        )
        report.recorded += 1
    return report
