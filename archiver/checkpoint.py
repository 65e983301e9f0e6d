"""Signed verify checkpoints: what ``verify`` has proven, so the next check starts there.

A clean ``verify --all`` (or ``--since-checkpoint``) run with the signing key
configured stores one checkpoint, Object Lock like a run manifest::

    {prefix}/checks/{yyyy}/{mm}/{dd}/{yyyymmddTHHMMSSffffffZ}.json   (+ .sig)

Canonical JSON (sorted keys), signed detached like every manifest:

* ``checkpoint_version`` (1), ``kind`` (``idpass-archiver/verify-checkpoint``)
* ``checked_at``: when the check ended (UTC)
* ``scope``: ``all`` or ``since_checkpoint``
* ``run_manifest``: ``{key, sha256, started_at}`` of the newest signed run manifest
  the check reached from the chain, or null when the archive had none
* ``previous_checkpoint``: ``{key, sha256}`` of the checkpoint it started from, or null
* ``counts``: ``passes_checked``, ``objects_checked``, ``run_manifests_checked``
* ``archiver_version``, ``signing`` (``algorithm``, ``key_id``)

A checkpoint is written only when the check found nothing: it certifies that
everything up to its run manifest was there and intact. The key sorts by time, so
the newest is the last one listed; one whose signature does not verify under a
trusted key is never started from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from archiver import __version__
from archiver.clock import isoformat
from archiver.core.format import JSON_TYPE, OCTET_TYPE, Layout, signature_key
from archiver.core.images import sha256_hex
from archiver.core.manifest import canonical_json
from archiver.core.signing import Signer, Verifier
from archiver.errors import FormatError, ObjectNotFound
from archiver.store import ObjectLock, ObjectStore

CHECKPOINT_KIND = "idpass-archiver/verify-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed checkpoint: where the next incremental check starts."""

    key: str
    sha256: str
    checked_at: datetime
    run_key: str | None
    run_sha256: str | None
    run_started_at: datetime | None


def checks_root(layout: Layout) -> str:
    """``{prefix}/checks/``, beside ``runs/`` and ``passes/``."""
    return layout.runs_root()[: -len("runs/")] + "checks/"


def checkpoint_key(layout: Layout, at: datetime) -> str:
    at = at.astimezone(UTC)
    return f"{checks_root(layout)}{at:%Y/%m/%d}/{at:%Y%m%dT%H%M%S%f}Z.json"


def build(
    *,
    checked_at: datetime,
    scope: str,
    head: tuple[str, str, datetime] | None,
    previous: Checkpoint | None,
    counts: dict[str, int],
    signing_key_id: str,
) -> bytes:
    """The canonical bytes of a checkpoint (see the module docstring)."""
    doc: dict[str, Any] = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "kind": CHECKPOINT_KIND,
        "checked_at": isoformat(checked_at),
        "scope": scope,
        "run_manifest": (
            {"key": head[0], "sha256": head[1], "started_at": isoformat(head[2])} if head else None
        ),
        "previous_checkpoint": (
            {"key": previous.key, "sha256": previous.sha256} if previous else None
        ),
        "counts": dict(sorted(counts.items())),
        "archiver_version": __version__,
        "signing": {"algorithm": "ed25519", "key_id": signing_key_id},
    }
    return canonical_json(doc)


def parse(key: str, data: bytes) -> Checkpoint:
    """Stored bytes → a checkpoint; :class:`FormatError` if they are not one this
    build reads (the message names no stored value)."""
    try:
        doc = orjson.loads(data)
        if doc["kind"] != CHECKPOINT_KIND or doc["checkpoint_version"] != CHECKPOINT_VERSION:
            raise FormatError("not a verify checkpoint of a known version")
        run = doc["run_manifest"]
        return Checkpoint(
            key=key,
            sha256=sha256_hex(data),
            checked_at=datetime.fromisoformat(doc["checked_at"]),
            run_key=str(run["key"]) if run else None,
            run_sha256=str(run["sha256"]) if run else None,
            run_started_at=datetime.fromisoformat(run["started_at"]) if run else None,
        )
    except FormatError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise FormatError("the verify checkpoint is malformed") from None


def newest_trusted(
    store: ObjectStore, layout: Layout, trusted: list[Verifier]
) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint whose signature verifies under a trusted key and that
    parses, and the keys of the newer ones passed over (unsigned, badly signed or
    malformed: ``verify`` names them)."""
    keys = sorted(
        (o.key for o in store.list(checks_root(layout)) if o.key.endswith(".json")),
        reverse=True,
    )
    passed_over: list[str] = []
    for key in keys:
        try:
            data = store.get(key)
            sig = store.get(signature_key(key))
            if any(v.verify(data, sig) for v in trusted):
                return parse(key, data), passed_over
        except (ObjectNotFound, FormatError):
            pass
        passed_over.append(key)
    return None, passed_over


def write(
    store: ObjectStore, key: str, data: bytes, signer: Signer, lock: ObjectLock | None
) -> None:
    """Store a checkpoint: its signature first, then the document (as a run manifest)."""
    sig = signer.sign(data)
    store.put(signature_key(key), sig, sha256=sha256_hex(sig), content_type=OCTET_TYPE, lock=lock)
    store.put(key, data, sha256=sha256_hex(data), content_type=JSON_TYPE, lock=lock)
