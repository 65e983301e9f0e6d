"""Signed verify checkpoints: what ``verify`` has proven, so the next check starts there.

A clean ``verify --all`` (or ``--since-checkpoint``) run with the signing key
configured stores one checkpoint, Object Lock like a run manifest::

    {prefix}/checks/{yyyy}/{mm}/{dd}/{yyyymmddTHHMMSSffffffZ}.json   (+ .sig)

Canonical JSON (sorted keys), signed detached like every manifest (``.sig``: the raw
64-byte Ed25519 signature of the document's bytes):

* ``checkpoint_version`` (1), ``kind`` (``idpass-archiver/verify-checkpoint``)
* ``checked_at``: when the check ended (UTC)
* ``scope``: ``all`` or ``since_checkpoint``
* ``run_manifests``: ``[{key, sha256, started_at}]``, the newest signed run manifest
  of each chain checked (the chains' tips; more than one with several workers),
  empty when the archive had none
* ``previous_checkpoint``: ``{key, sha256}`` of the checkpoint it started from, or null
* ``counts``: ``passes_checked``, ``objects_checked``, ``run_manifests_checked``
* ``archiver_version``, ``signing`` (``algorithm``, ``key_id``)

A checkpoint is written only when the check found nothing: it certifies that
everything up to its run manifest was there and intact. The key sorts by time, so
the newest is the last one listed; one whose signature does not verify under a
trusted key is never started from (``bad_checkpoint``).

``verify --since-checkpoint`` (:func:`check_since`) starts from the newest trusted
checkpoint: it reads only the run manifests stored under the days since its tips
started (less :data:`LOOKBACK`, as a run stores its manifest under its start day
when it ends), checks that every link of those newer than the tips resolves, with no
gap, to one of them or to a tip, and checks the passes they list. The cost is that
of the days' work, not of the archive. What it does not do is the whole archive's:
``unlisted`` passes and orphans need ``verify --all``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson

from archiver import __version__
from archiver.clock import isoformat
from archiver.core.format import JSON_TYPE, OCTET_TYPE, Layout, signature_key
from archiver.core.images import sha256_hex
from archiver.core.manifest import canonical_json
from archiver.core.signing import Signer, Verifier
from archiver.errors import FormatError, ObjectNotFound
from archiver.store import ObjectLock, ObjectStore

if TYPE_CHECKING:
    from archiver.core.format import RunManifest
    from archiver.verify import ArchiveChecker, RunLink, VerifyReport

CHECKPOINT_KIND = "idpass-archiver/verify-checkpoint"
CHECKPOINT_VERSION = 1
#: How long before its tip's start a run that followed it may have started (a run
#: stores its manifest, under its start date, when it ends): as app.ORPHAN_LOOKBACK.
LOOKBACK = timedelta(days=2)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed checkpoint: where the next incremental check starts."""

    key: str
    sha256: str
    checked_at: datetime
    tips: tuple[RunLink, ...]


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
    tips: list[RunLink],
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
        "run_manifests": [
            {"key": t.key, "sha256": t.sha256, "started_at": isoformat(t.started_at)} for t in tips
        ],
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
    from archiver.verify import RunLink

    try:
        doc = orjson.loads(data)
        if doc["kind"] != CHECKPOINT_KIND or doc["checkpoint_version"] != CHECKPOINT_VERSION:
            raise FormatError("not a verify checkpoint of a known version")
        return Checkpoint(
            key=key,
            sha256=sha256_hex(data),
            checked_at=datetime.fromisoformat(doc["checked_at"]),
            tips=tuple(
                RunLink(str(t["key"]), str(t["sha256"]), datetime.fromisoformat(t["started_at"]))
                for t in doc["run_manifests"]
            ),
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


def check_since(checker: ArchiveChecker, cp: Checkpoint, now: datetime, *, deep: bool) -> None:
    """The incremental check (see the module docstring); findings go to the checker."""
    prefixes = _day_prefixes(checker.layout, cp, now)
    docs, by_sha = checker.load_runs(prefixes)
    tips = frozenset(t.sha256 for t in cp.tips)
    for tip in cp.tips:
        if tip.sha256 not in by_sha:
            checker._find("chain_broken", tip.key, "the run manifest a checkpoint names is gone")
    old = _ancestors(docs, by_sha, tips)
    new = [(key, run) for key, run in docs if _sha_of(by_sha, key) not in old]
    _check_new_links(checker, new, by_sha, old, tips)
    hidden = [r for prefix in prefixes for r in checker.hidden_runs(prefix)]
    runs: list[RunManifest] = [run for _, run in new] + hidden
    for pid in sorted({p.pass_id for run in runs for p in run.passes}):
        checker.check_pass(pid, deep=deep)
    from archiver.verify import _tips

    checker.report.tips = _tips(docs, by_sha) or list(cp.tips)
    checker.report.started_from = cp.key


def _day_prefixes(layout: Layout, cp: Checkpoint, now: datetime) -> list[str]:
    """The day folders under ``runs/`` that may hold a run manifest newer than the
    checkpoint's tips."""
    if not cp.tips:  # the checkpoint of an empty archive: every run is new
        return [layout.runs_root()]
    first = min(t.started_at for t in cp.tips) - LOOKBACK
    days = (now.astimezone(UTC).date() - first.astimezone(UTC).date()).days + 1
    return [layout.runs_day(first + timedelta(days=n)) for n in range(days)]


def _check_new_links(
    checker: ArchiveChecker,
    new: list[tuple[str, RunManifest]],
    by_sha: dict[str, str],
    old: set[str],
    tips: frozenset[str],
) -> None:
    """Each run manifest newer than the checkpoint links, with no gap, to another
    new one or to a tip; none follows what the checkpoint already saw followed."""
    checker._check_chain(new, by_sha, tips)
    for key, run in new:
        prev = run.previous
        if prev is not None and prev.sha256 in old - tips:
            checker._find("chain_fork", prev.key, f"{key} follows a run manifest already followed")


def _sha_of(by_sha: dict[str, str], key: str) -> str:
    return next(sha for sha, k in by_sha.items() if k == key)


def _ancestors(
    docs: list[tuple[str, RunManifest]], by_sha: dict[str, str], tips: frozenset[str]
) -> set[str]:
    """The SHA-256 of the checkpoint's tips and of the loaded run manifests before
    them: what the checkpoint already covers."""
    runs = dict(docs)
    seen: set[str] = set()
    todo = [t for t in tips if t in by_sha]
    while todo:
        sha = todo.pop()
        if sha in seen:
            continue
        seen.add(sha)
        prev = runs[by_sha[sha]].previous
        if prev is not None and prev.sha256 in by_sha:
            todo.append(prev.sha256)
    return seen | tips


def record(
    store: ObjectStore,
    layout: Layout,
    signer: Signer,
    lock: ObjectLock | None,
    report: VerifyReport,
    *,
    scope: str,
    now: datetime,
) -> str:
    """Store the checkpoint of a clean check; returns its key."""
    previous = None
    if report.started_from is not None:
        previous = parse(report.started_from, store.get(report.started_from))
    data = build(
        checked_at=now,
        scope=scope,
        tips=report.tips,
        previous=previous,
        counts={
            "passes_checked": report.passes_checked,
            "objects_checked": report.objects_checked,
            "run_manifests_checked": report.run_manifests_checked,
        },
        signing_key_id=signer.key_id,
    )
    key = checkpoint_key(layout, now)
    write(store, key, data, signer, lock)
    return key
