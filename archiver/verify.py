"""``idpass-archiver verify``: prove from the bucket alone that the archive is intact.

Needs read access to the bucket and the trusted public key(s); no API token, no
signing key, no catalog. For each pass manifest in scope it checks:

* the manifest parses, has a known version, and its detached signature verifies
  under a trusted key;
* every listed object exists at its recorded version with the recorded size,
  SHA-256 (the stored S3 checksum) and encryption, and, when the manifest recorded
  Object Lock retention, still has it; the current version of the key is the
  recorded one (nothing was written over it, nothing deleted);
* with ``deep``, each object downloaded and hashed again;

and across the archive (``all``): objects under ``passes/`` that no manifest lists
(orphans); the hash chain of signed, trusted run manifests: every link from each
chain's newest back to its first resolves (a run manifest deleted from the middle of
a chain, or altered, breaks a link: ``chain_broken``, ``chain_altered``; one followed
twice is a ``chain_fork``; an unsigned or badly signed one is named as such and kept
out of the chain and the pass lists); and completeness in
both directions between the passes in the bucket and the union of the trusted run
manifests' pass lists (``unlisted``, ``listed_but_missing``). The bucket's version
listing shows what a delete without a version id (allowed under COMPLIANCE
retention) hides: a listed object or a trusted run manifest behind a delete marker
is a ``delete_marker`` finding, and the passes such a run manifest lists still count
as listed. ``since_checkpoint`` is the incremental check of
:mod:`archiver.checkpoint`. With the
config requiring Object Lock, every manifest, signature, run manifest and key copy
the job wrote must carry retention (``no_retention``).

Only the store saying an object is not there (``head`` None, ``get``
:class:`~archiver.errors.ObjectNotFound`) is a finding. Any other
:class:`~archiver.errors.StoreError` (credentials refused, the endpoint unreachable)
says nothing about the archive: it propagates, and verify ends without a verdict.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from archiver.core.format import (
    Layout,
    ObjectEntry,
    PassManifest,
    RunManifest,
    signature_key,
)
from archiver.core.signing import Verifier
from archiver.errors import FormatError, ObjectNotFound
from archiver.store import ObjectInfo, ObjectStore


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # missing, altered, size_mismatch, replaced, deleted, unencrypted, unlocked,
    #            bad_signature, untrusted_key, invalid_manifest, orphan, chain_broken, ...
    key: str
    detail: str
    pass_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "pass_id": self.pass_id, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class RunLink:
    """A run manifest by key and content hash, and when its run started."""

    key: str
    sha256: str
    started_at: datetime


@dataclass
class VerifyReport:
    passes_checked: int = 0
    objects_checked: int = 0
    bytes_hashed: int = 0
    run_manifests_checked: int = 0
    findings: list[Finding] = field(default_factory=list)
    tips: list[RunLink] = field(default_factory=list)  # the chains' newest, as checked
    started_from: str | None = None  # the checkpoint an incremental check started from
    checkpoint: str | None = None  # the checkpoint this check wrote

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for f in self.findings:
            counts[f.kind] += 1
        return {
            "ok": self.ok,
            "passes_checked": self.passes_checked,
            "objects_checked": self.objects_checked,
            "bytes_hashed": self.bytes_hashed,
            "run_manifests_checked": self.run_manifests_checked,
            "finding_counts": dict(sorted(counts.items())),
            "findings": [f.to_json() for f in self.findings],
            **({"started_from": self.started_from} if self.started_from else {}),
            **({"checkpoint": self.checkpoint} if self.checkpoint else {}),
        }


@dataclass(frozen=True)
class VerifyScope:
    pass_id: str | None = None
    run_id: str | None = None
    since: datetime | None = None
    everything: bool = False
    sample_percent: float | None = None
    deep: bool = False
    seed: int | None = None
    since_checkpoint: bool = False


class ArchiveChecker:
    """Runs the checks; see the module docstring."""

    def __init__(
        self,
        store: ObjectStore,
        layout: Layout,
        trusted: list[Verifier],
        *,
        require_lock: bool = False,
        identities: list[Any] | None = None,
    ) -> None:
        self.identities = identities or []
        self.store = store
        self.layout = layout
        self.trusted = {v.key_id: v for v in trusted}
        self.require_lock = require_lock
        self.report = VerifyReport()
        self.trusted_runs: list[tuple[str, str]] = []  # (key, sha256) of each signed one

    # -- helpers ------------------------------------------------------------------

    def _find(self, kind: str, key: str, detail: str, pass_id: str | None = None) -> None:
        self.report.findings.append(Finding(kind, key, detail, pass_id))

    def _signed(self, key: str, data: bytes, declared_key_id: str | None) -> bool:
        """Check the detached signature of ``key``; record findings; True if good."""
        try:
            sig = self.store.get(signature_key(key))
        except ObjectNotFound:
            self._find("unsigned", key, "the detached signature is missing")
            return False
        if declared_key_id is not None and declared_key_id not in self.trusted:
            self._find(
                "untrusted_key", key, f"signed with key {declared_key_id}, which is not trusted"
            )
            return False
        if not any(v.verify(data, sig) for v in self.trusted.values()):
            self._find("bad_signature", key, "the signature does not verify under a trusted key")
            return False
        return True

    # -- passes -------------------------------------------------------------------

    def check_pass(self, pass_id: str, *, deep: bool) -> set[str]:
        """Verify one pass; returns the keys its manifest accounts for."""
        mkey = self.layout.manifest(pass_id)
        accounted = {mkey, signature_key(mkey)}
        try:
            data = self.store.get(mkey)
        except ObjectNotFound:
            self._find("missing", mkey, "the pass manifest is missing", pass_id)
            return accounted
        self.report.passes_checked += 1
        try:
            manifest = PassManifest.parse(data)
        except FormatError as exc:
            self._find("invalid_manifest", mkey, exc.message, pass_id)
            return accounted
        if manifest.pass_id != pass_id:
            self._find("invalid_manifest", mkey, "manifest names another pass", pass_id)
        self._signed(mkey, data, manifest.signing_key_id)
        for entry in manifest.objects:
            accounted.add(entry.key)
            self._check_object(entry, manifest.sse, pass_id, deep=deep)
        return accounted

    def _check_object(self, entry: ObjectEntry, sse: str, pass_id: str, *, deep: bool) -> None:
        self.report.objects_checked += 1
        info = self.store.head(entry.key, version_id=entry.version_id)
        if info is None:
            self._find("missing", entry.key, "the recorded object version does not exist", pass_id)
            return
        self._check_stored(entry, info, sse, pass_id, deep=deep)
        self._check_lock(entry, info, pass_id)
        if entry.version_id is not None:
            self._check_current(entry, pass_id)
        if deep:
            self._check_content(entry, pass_id)

    def _check_stored(
        self, entry: ObjectEntry, info: ObjectInfo, sse: str, pass_id: str, *, deep: bool
    ) -> None:
        """Size, stored checksum and encryption of the recorded version."""
        key = entry.key
        if info.size != entry.size:
            self._find("size_mismatch", key, f"size {info.size}, recorded {entry.size}", pass_id)
        if info.sha256 is not None and info.sha256 != entry.sha256:
            self._find("altered", key, "stored SHA-256 checksum differs from the manifest", pass_id)
        elif info.sha256 is None and not deep:
            self._find("no_checksum", key, "no stored checksum; use --deep to hash", pass_id)
        if not info.encryption:
            self._find("unencrypted", key, "the recorded version is not encrypted", pass_id)
        elif info.encryption != sse:
            self._find("encryption_mismatch", key, f"{info.encryption}, recorded {sse}", pass_id)

    def _check_lock(self, entry: ObjectEntry, info: ObjectInfo, pass_id: str) -> None:
        key = entry.key
        if entry.retain_until and (info.lock_mode is None or info.retain_until is None):
            self._find("unlocked", key, "Object Lock retention recorded but not present", pass_id)
        elif self.require_lock and info.lock_mode is None:
            self._find(
                "unlocked", key, "no Object Lock retention (the config requires it)", pass_id
            )

    def _check_current(self, entry: ObjectEntry, pass_id: str) -> None:
        """The current version of the key is still the recorded one."""
        key = entry.key
        latest = self.store.head(key)
        if latest is None:
            self._find("deleted", key, "the current version is deleted (delete marker)", pass_id)
        elif latest.version_id != entry.version_id:
            detail = "a newer version was written over the recorded one"
            if not latest.encryption:
                detail += " (unencrypted)"
                self._find("unencrypted", key, "the current version is not encrypted", pass_id)
            self._find("replaced", key, detail, pass_id)

    def _check_content(self, entry: ObjectEntry, pass_id: str) -> None:
        """Download the recorded version and hash it again."""
        try:
            body = self.store.get(entry.key, version_id=entry.version_id)
        except ObjectNotFound as exc:  # gone since its head: nothing to hash
            self._find("unreadable", entry.key, exc.message, pass_id)
            return
        self.report.bytes_hashed += len(body)
        if hashlib.sha256(body).hexdigest() != entry.sha256:
            self._find("altered", entry.key, "content hash differs from the manifest", pass_id)
        elif self.identities and entry.age_encrypted:
            self._check_plaintext(entry, body, pass_id)

    def _check_plaintext(self, entry: ObjectEntry, body: bytes, pass_id: str) -> None:
        """Client-side encryption: decrypt with the auditor's identity and hash again."""
        import pyrage

        try:
            plain = pyrage.decrypt(body, self.identities)
        except Exception:
            self._find("undecryptable", entry.key, "no given identity opens it", pass_id)
            return
        if hashlib.sha256(plain).hexdigest() != entry.plaintext_sha256:
            self._find("altered", entry.key, "decrypted content differs", pass_id)

    # -- whole archive ------------------------------------------------------------

    def pass_ids(self) -> tuple[list[str], list[ObjectInfo]]:
        """Pass ids that have a manifest, and every object under passes/."""
        objects = list(self.store.list(self.layout.passes_root()))
        found = (self.layout.manifest_pass_id(o.key) for o in objects)
        return sorted({pid for pid in found if pid is not None}), objects

    def orphans(self, objects: list[ObjectInfo], accounted: set[str]) -> None:
        for o in objects:
            if o.key not in accounted:
                info = self.store.head(o.key)
                note = "" if info is None or info.encryption else " and unencrypted"
                if info is not None and not info.encryption:
                    self._find("unencrypted", o.key, "object is not encrypted")
                self._find("orphan", o.key, f"no manifest lists this object{note}")

    def runs(
        self, *, since: datetime | None = None, run_id: str | None = None
    ) -> list[RunManifest]:
        """Verify run manifests (signatures, schema) and the hash chain the trusted
        ones form; returns the trusted ones in scope."""
        docs, by_sha = self.load_runs([self.layout.runs_root()])
        self._check_chain(docs, by_sha)
        self.report.tips = _tips(docs, by_sha)
        return [
            run
            for _, run in docs
            if (run_id is None or run.run_id == run_id)
            and (since is None or run.started_at >= since)
        ]

    def load_runs(
        self, prefixes: list[str]
    ) -> tuple[list[tuple[str, RunManifest]], dict[str, str]]:
        """The run manifests under ``prefixes`` that parse and verify under a trusted
        key (the others are findings, and no link of the chain), and their keys by
        SHA-256."""
        by_sha: dict[str, str] = {}
        docs: list[tuple[str, RunManifest]] = []
        for o in (o for prefix in prefixes for o in self.store.list(prefix)):
            if not self.layout.is_run_manifest(o.key):
                continue
            data = self.store.get(o.key)
            self.report.run_manifests_checked += 1
            try:
                run = RunManifest.parse(data)
            except FormatError as exc:
                self._find("invalid_run_manifest", o.key, exc.message)
                continue
            if not self._signed(o.key, data, run.signing_key_id):
                continue  # named unsigned/bad_signature/untrusted_key
            by_sha[hashlib.sha256(data).hexdigest()] = o.key
            docs.append((o.key, run))
        self.trusted_runs += [(key, sha) for sha, key in by_sha.items()]
        return docs, by_sha

    def _check_chain(
        self,
        docs: list[tuple[str, RunManifest]],
        by_sha: dict[str, str],
        known: frozenset[str] = frozenset(),
    ) -> None:
        """Every link resolves to a trusted run manifest loaded (or, incrementally, to
        one a checkpoint names: ``known``); no run manifest is followed twice."""
        followers: dict[str, list[str]] = defaultdict(list)
        for key, run in docs:
            prev = run.previous
            if prev is None:
                continue
            followers[prev.sha256].append(key)
            if prev.sha256 not in by_sha and prev.sha256 not in known:
                present = any(k == prev.key for k in by_sha.values())
                kind = "chain_altered" if present else "chain_broken"
                what = "was altered" if present else "is missing"
                self._find(kind, prev.key, f"run manifest {what}; {key} links to it")
        for sha, keys in followers.items():
            if len(keys) > 1:
                self._find("chain_fork", by_sha.get(sha, sha), f"followed by {len(keys)} runs")

    # -- completeness ---------------------------------------------------------------

    def hidden(self, prefix: str) -> dict[str, str]:
        """Keys under ``prefix`` whose latest entry is a delete marker over a stored
        version, each with the id of the newest version it hides."""
        latest_marker: set[str] = set()
        newest: dict[str, str] = {}
        for v in self.store.list_versions(prefix):
            if v.is_latest and v.delete_marker:
                latest_marker.add(v.key)
            elif not v.delete_marker and v.version_id is not None and v.key not in newest:
                newest[v.key] = v.version_id  # S3 lists a key's versions newest first
        return {k: newest[k] for k in sorted(latest_marker) if k in newest}

    def hidden_runs(self, prefix: str | None = None) -> list[RunManifest]:
        """Trusted run manifests behind a delete marker: each is a ``delete_marker``
        finding, and the passes it lists still count as listed."""
        found: list[RunManifest] = []
        hidden = self.hidden(prefix or self.layout.runs_root())
        for key, version_id in hidden.items():
            if not self.layout.is_run_manifest(key):
                continue
            sig_key = signature_key(key)
            sig_version = hidden.get(sig_key)
            try:
                data = self.store.get(key, version_id=version_id)
                run = RunManifest.parse(data)
                sig = self.store.get(sig_key, version_id=sig_version)
            except (FormatError, ObjectNotFound):
                continue  # no run manifest of ours: something planted, then deleted
            if not any(v.verify(data, sig) for v in self.trusted.values()):
                continue
            self._find("delete_marker", key, "a signed run manifest is hidden by a delete marker")
            found.append(run)
        return found

    def completeness(
        self, in_bucket: list[str], runs: list[RunManifest], accounted: set[str]
    ) -> None:
        """Both directions between the passes with a manifest in the bucket and the
        passes the trusted run manifests list; and a delete marker over any key a
        manifest lists, also in a pass left out of a sample."""
        listed = {p.pass_id for run in runs for p in run.passes}
        present = set(in_bucket)
        hidden = self.hidden(self.layout.passes_root())
        named = {f.key for f in self.report.findings}
        for key in sorted(hidden.keys() & accounted - named):
            self._find("delete_marker", key, "a listed object is hidden by a delete marker")
        for pid in sorted(present - listed):
            key = self.layout.manifest(pid)
            self._find("unlisted", key, "no signed run manifest lists this pass", pid)
        for pid in sorted(listed - present):
            key = self.layout.manifest(pid)
            why = "hidden by a delete marker" if key in hidden else "not in the bucket"
            self._find("listed_but_missing", key, f"a signed run lists this pass; {why}", pid)

    def retention(self, keys: list[str]) -> None:
        """Object Lock required: each object the job wrote keeps its retention."""
        for key in keys:
            info = self.store.head(key)
            if info is not None and info.lock_mode is None:
                self._find("no_retention", key, "no Object Lock retention (the config requires it)")


def _tips(docs: list[tuple[str, RunManifest]], by_sha: dict[str, str]) -> list[RunLink]:
    """The ends of the chains (one per chain; more with a fork): walking back from
    each, every link resolves (else ``chain_broken``) down to a first run manifest."""
    followed = {run.previous.sha256 for _, run in docs if run.previous is not None}
    runs = dict(docs)
    return [
        RunLink(key, sha, runs[key].started_at)
        for sha, key in sorted(by_sha.items(), key=lambda item: item[1])
        if sha not in followed
    ]


def sample(ids: list[str], percent: float | None, seed: int | None) -> list[str]:
    if percent is None or percent >= 100:
        return ids
    rng = random.Random(seed)
    k = max(1, round(len(ids) * percent / 100)) if ids else 0
    return sorted(rng.sample(ids, k))


def run_verify(
    store: ObjectStore,
    layout: Layout,
    trusted: list[Verifier],
    scope: VerifyScope,
    *,
    require_lock: bool = False,
    identities: list[Any] | None = None,
) -> VerifyReport:
    v = ArchiveChecker(store, layout, trusted, require_lock=require_lock, identities=identities)
    if scope.pass_id is not None:
        v.check_pass(scope.pass_id, deep=scope.deep)
        return v.report
    if scope.since_checkpoint and _since_checkpoint(v, scope):
        return v.report
    if scope.run_id is not None or scope.since is not None:
        runs = v.runs(since=scope.since, run_id=scope.run_id)
        if scope.run_id is not None and not runs:
            v._find("missing", scope.run_id, "no run manifest has this run id")
        ids = sorted({p.pass_id for run in runs for p in run.passes})
        for pid in sample(ids, scope.sample_percent, scope.seed):
            v.check_pass(pid, deep=scope.deep)
        return v.report
    ids, objects = v.pass_ids()
    accounted: set[str] = set()
    chosen = set(sample(ids, scope.sample_percent, scope.seed))
    for pid in ids:
        if pid in chosen:
            accounted |= v.check_pass(pid, deep=scope.deep)
        else:  # not sampled: still account for its objects, so they are no orphans
            accounted |= _listed_keys(store, layout, pid)
    v.orphans(objects, accounted)
    runs = v.runs()
    v.completeness(ids, runs + v.hidden_runs(), accounted)
    if require_lock:
        v.retention(_written_keys(v, ids))
    return v.report


def _since_checkpoint(v: ArchiveChecker, scope: VerifyScope) -> bool:
    """The incremental check from the newest trusted checkpoint; False if there is
    none (then the whole archive is checked)."""
    from archiver import checkpoint

    cp, passed_over = checkpoint.newest_trusted(v.store, v.layout, list(v.trusted.values()))
    for key in passed_over:
        v._find("bad_checkpoint", key, "a checkpoint that does not verify under a trusted key")
    if cp is None:
        return False
    checkpoint.check_since(v, cp, datetime.now(UTC), deep=scope.deep)
    return True


def _written_keys(v: ArchiveChecker, pass_ids: list[str]) -> list[str]:
    """The manifests, signatures, signed run manifests and key copies the job wrote
    (not what someone else planted beside them: that is named otherwise)."""
    layout = v.layout
    manifests = [layout.manifest(pid) for pid in pass_ids]
    manifests += [key for key, _ in v.trusted_runs]
    keys = [k for m in manifests for k in (m, signature_key(m))]
    keys += [o.key for o in v.store.list(layout.public_key("")[: -len(".pub.pem")])]
    return keys


def _listed_keys(store: ObjectStore, layout: Layout, pass_id: str) -> set[str]:
    mkey = layout.manifest(pass_id)
    keys = {mkey, signature_key(mkey)}
    try:
        manifest = PassManifest.parse(store.get(mkey))
    except (ObjectNotFound, FormatError):
        return keys
    return keys | manifest.keys()
