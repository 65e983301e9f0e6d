"""The run manifest: one signed record per run, hash-chained to the previous one.

Written at ``{prefix}/runs/{yyyy}/{mm}/{dd}/{run_id}.json`` with a detached Ed25519
signature beside it (``.json.sig``). Canonical JSON, versioned, published as
``config/schemas/run-manifest.v2.schema.json`` (version 1 is still read). ``previous``
names the SHA-256 (and key) of the chain's previous run manifest, so deleting or
altering a run manifest in the middle of the chain breaks a link that ``verify``
reports. No personal data: pass ids, hashes, counts and reasons only.

``passes`` lists what the run committed (or found already archived), and, marked
``"recovered": true``, passes an earlier run committed but never listed (it died
before storing its run manifest): the catalog keeps which passes a stored run
manifest lists (:meth:`~archiver.catalog.sql.SqlCatalog.unlisted`), so every
committed pass ends up listed by some run manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from archiver.catalog import Outcome, UnlistedPass
from archiver.clock import isoformat
from archiver.core.format import (
    RUN_MANIFEST_KIND,
    RUN_MANIFEST_SCHEMA,
    RUN_MANIFEST_VERSION,
    validate_against,
)
from archiver.core.images import sha256_hex
from archiver.core.manifest import canonical_json
from archiver.results import RunSummary

#: At most this many recovered passes in one run manifest (about 250 bytes each): a
#: larger backlog (a catalog migrated to schema 6, or rebuilt) is listed over the next
#: runs, the lowest pass ids first.
RECOVERED_PER_RUN = 10_000


def build_run_manifest(
    summary: RunSummary,
    *,
    chain_id: str,
    archiver_version: str,
    config_fingerprint: str,
    previous_key: str | None,
    previous_sha256: str | None,
    signing_key_id: str,
    recovered: Sequence[UnlistedPass] = (),
) -> dict[str, Any]:
    """The run manifest of ``summary``; ``recovered`` are passes earlier runs committed
    and listed nowhere (a pass the run lists as its own is not listed twice)."""
    assert summary.finished_at is not None
    archived = sorted(
        (r for r in summary.results if r.outcome is Outcome.ARCHIVED and r.manifest_key),
        key=lambda r: r.pass_id,
    )
    own = [
        {
            "pass_id": r.pass_id,
            "manifest_key": r.manifest_key,
            "manifest_sha256": r.manifest_sha256,
            "already_archived": r.already_archived,
            "recovered": False,
        }
        for r in archived
    ]
    mine = {r.pass_id for r in archived}
    found = [
        {
            "pass_id": p.pass_id,
            "manifest_key": p.manifest_key,
            "manifest_sha256": p.manifest_sha256,
            "already_archived": True,
            "recovered": True,
        }
        for p in sorted(recovered, key=lambda p: p.pass_id)
        if p.pass_id not in mine
    ]
    problems = [
        r for r in summary.results if r.outcome in (Outcome.EXPIRED, Outcome.FAILED, Outcome.RETRY)
    ]
    return {
        "run_manifest_version": RUN_MANIFEST_VERSION,
        "kind": RUN_MANIFEST_KIND,
        "run_id": summary.run_id,
        "chain_id": chain_id,
        "worker_id": summary.worker_id,
        "archiver_version": archiver_version,
        "config_fingerprint": config_fingerprint,
        "started_at": isoformat(summary.started_at),
        "finished_at": isoformat(summary.finished_at),
        "exit_code": summary.exit_code,
        "stopped_early": summary.stopped_early,
        "systemic_error": summary.systemic_error,
        "counts": summary.counts,
        "passes": own + found,
        "not_archived": sorted(
            (
                {"pass_id": r.pass_id, "outcome": r.outcome.value, "reason": r.reason or ""}
                for r in problems
            ),
            key=lambda d: (d["outcome"], d["pass_id"]),
        ),
        "previous": ({"key": previous_key, "sha256": previous_sha256} if previous_sha256 else None),
        "signing": {"algorithm": "ed25519", "key_id": signing_key_id},
    }


def listed_by(summary: RunSummary, recovered: Sequence[UnlistedPass]) -> list[tuple[str, str]]:
    """The (pass id, manifest SHA-256) of every pass the run manifest that
    :func:`build_run_manifest` makes of ``summary`` and ``recovered`` lists."""
    own = [
        (r.pass_id, r.manifest_sha256)
        for r in summary.results
        if r.outcome is Outcome.ARCHIVED and r.manifest_key and r.manifest_sha256
    ]
    return own + [(p.pass_id, p.manifest_sha256) for p in recovered]


def validate_run_manifest(doc: Any) -> None:
    """Raise :class:`~archiver.errors.FormatError` unless ``doc`` is a run manifest of
    the published schema. The reader is :meth:`archiver.core.format.RunManifest.parse`."""
    validate_against(RUN_MANIFEST_SCHEMA, doc, "run_manifest_version", RUN_MANIFEST_VERSION)


def run_manifest_bytes(doc: dict[str, Any], *, check: bool = True) -> tuple[bytes, str]:
    """Validate (unless ``check`` is false), serialise canonically, and hash.

    ``run`` passes ``check=False``: its run manifest comes from
    :func:`build_run_manifest` alone, and validating it meant importing jsonschema
    (30-65 ms, with its metaschemas) in every run, a tenth of a run's fixed cost. The
    tests validate every run manifest a CLI test stores, and ``verify`` validates
    every one it reads.
    """
    if check:
        validate_run_manifest(doc)
    data = canonical_json(doc)
    return data, sha256_hex(data)
