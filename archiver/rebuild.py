"""``idpass-archiver catalog rebuild``: reconstruct the catalog from the S3 manifests.

S3 is the source of truth: a pass is archived exactly when its manifest exists and
is its commit. This lists every ``passes/*/manifest.json`` and records the pass as
``archived`` (with its manifest key and hash, completion time, retention, deadline
and image totals) only when the manifest's detached signature verifies under a
trusted key, it parses and it names the pass of its directory
(:func:`~archiver.core.signing.trusted_pass_manifest`); any other is rejected with
its ``untrusted_manifest`` reason and changes nothing. The trusted keys are the
configured ones only (``signing.key_file``'s public half, ``signing.public_key_files``):
never the copy under ``keys/``, which anyone who can write to the bucket can replace.
Passes the catalog knows but S3 has no manifest for are left as they are.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from archiver.catalog import PassUpsert
from archiver.catalog.sql import SqlCatalog
from archiver.core.format import Layout, PassManifest, signature_key
from archiver.core.signing import Verifier, trusted_pass_manifest
from archiver.errors import ConfigError, ObjectNotFound, StoreError, UntrustedManifest
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
    trusted: Iterable[Verifier],
) -> RebuildReport:
    """Record every pass whose stored manifest is its commit. Raises ConfigError
    when no key is trusted: then no manifest could be told from a planted one."""
    verifiers = list(trusted)
    if not verifiers:
        raise ConfigError(
            "catalog rebuild records only manifests signed by a configured key: set "
            "signing.key_file or signing.public_key_files",
            key="signing.public_key_files",
        )
    report = RebuildReport()
    for info in store.list(layout.passes_root()):
        pass_id = layout.manifest_pass_id(info.key)
        if pass_id is None:
            continue
        report.manifests += 1
        try:
            data, manifest = _read(store, info.key, pass_id, verifiers)
        except UntrustedManifest as exc:
            report.rejected.append((info.key, f"{exc.reason}: {exc.message}"))
            continue
        except StoreError as exc:
            report.rejected.append((info.key, exc.message))
            continue
        _record(catalog, manifest, info.key, data, now)
        report.recorded += 1
    return report


def _read(
    store: ObjectStore, key: str, pass_id: str, verifiers: list[Verifier]
) -> tuple[bytes, PassManifest]:
    data = store.get(key)
    try:
        signature: bytes | None = store.get(signature_key(key))
    except ObjectNotFound:
        signature = None
    manifest = trusted_pass_manifest(data, signature, key=key, pass_id=pass_id, trusted=verifiers)
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
