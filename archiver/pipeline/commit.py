"""The commit protocol of one pass: its objects, then its manifest, last.

1. every object of the plan is put (a conditional create), with ``SHA256SUMS`` in
   the same round trip: it lists the hashes known before any put;
2. where an earlier, interrupted attempt left other bytes at a key the plan marks
   adoptable (a record, an age ciphertext), that object is kept and listed as it
   is, and ``SHA256SUMS`` is rewritten as a new version to list what is stored;
3. the manifest is built from what the store reported, signed, and the signature
   put before the manifest: ``manifest.json`` is the commit marker, written last.

A crash anywhere before step 3 leaves no manifest: the pass is not archived, and a
rerun finds its objects (same bytes: reused; adoptable: adopted). When another
worker commits the pass first, its manifest stands and is reported.

A manifest found at the pass's key is its commit only when a trusted key signed it
and it names the pass (:func:`~archiver.core.signing.trusted_pass_manifest`):
anything else is an :class:`~archiver.errors.UntrustedManifest`, and the pass fails
without being read or overwritten.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import pyrage
import structlog

from archiver import __version__
from archiver.catalog import Outcome
from archiver.clock import Clock
from archiver.core import manifest as mf
from archiver.core.format import (
    JSON_TYPE,
    OCTET_TYPE,
    SEALED_PAYLOAD,
    SUMS_TYPE,
    Layout,
    ObjectEntry,
    PassFacts,
    signature_key,
)
from archiver.core.images import sha256_hex
from archiver.core.signing import Signer, Verifier, trusted_pass_manifest
from archiver.errors import ArchiverError, ObjectConflict, ObjectNotFound, UntrustedManifest
from archiver.pipeline.confirm import SlotSeen
from archiver.pipeline.options import PipelineOptions
from archiver.pipeline.plan import ObjectSpec, image_key
from archiver.results import PassResult
from archiver.store import ObjectLock, ObjectStore, PutResult

log = structlog.get_logger("archiver.pipeline")

#: Runs ``fn(*args)`` off the event loop and returns its result.
Offload = Callable[..., Awaitable[Any]]


@dataclass(kw_only=True)
class Committer:
    """Stores a pass's planned objects and commits them with its signed manifest.
    With ``age_recipients``, the plan's objects marked ``encrypt`` are encrypted to
    them before the put."""

    store: ObjectStore
    layout: Layout
    signer: Signer
    opt: PipelineOptions
    clock: Clock
    offload: Offload
    age_recipients: Sequence[Any] = ()
    #: the keys whose manifests count as commits; empty: this signer's alone
    trusted: Sequence[Verifier] = ()
    _put_slots: asyncio.Semaphore = field(init=False)
    _trusted: list[Verifier] = field(init=False)

    def __post_init__(self) -> None:
        self._put_slots = asyncio.Semaphore(self.opt.max_puts)
        self._trusted = list(self.trusted) or [self.signer.verifier]

    async def existing(self, pass_id: str) -> PassResult | None:
        """The pass's outcome if its manifest is stored already, else None.

        A stored manifest is the pass's commit only when it is signed by a trusted
        key, parses and names this pass (:func:`trusted_pass_manifest`); otherwise
        :class:`UntrustedManifest` is raised and the pass fails for a person to
        decide: the API is not read and nothing is overwritten."""
        key = self.layout.manifest(pass_id)
        info = await self.offload(self.store.head, key)
        if info is None:
            return None
        data: bytes = await self.offload(self.store.get, key)
        signature = await self._signature(signature_key(key))
        try:
            manifest = trusted_pass_manifest(
                data, signature, key=key, pass_id=pass_id, trusted=self._trusted
            )
        except UntrustedManifest as exc:
            log.error("manifest_untrusted", key=key, problem=exc.problem)
            raise
        return PassResult.archived_by(manifest, key, data, reason="manifest already present")

    async def _signature(self, key: str) -> bytes | None:
        """The detached signature stored at ``key``, or None when there is none."""
        try:
            signature: bytes = await self.offload(self.store.get, key)
        except ObjectNotFound:
            return None
        return signature

    async def commit(
        self,
        pass_id: str,
        *,
        run_id: str,
        facts: PassFacts,
        specs: list[ObjectSpec],
        slots: mf.SlotReport,
        earlier: Sequence[ObjectEntry] = (),
    ) -> PassResult:
        """Put the objects, then the signature, then the manifest. ``earlier``: images
        an earlier read of the pass stored (:meth:`stage`) that the last read did not
        return; they are listed as stored."""
        bodies = await self._bodies(specs)
        stored, sums = await self._put_objects(pass_id, specs, bodies, earlier)
        entries = [_entry(put, spec) for spec, put in zip(specs, stored, strict=True)]
        entries.extend(earlier)
        entries.append(_entry(sums))
        doc = mf.build_manifest(
            pass_id=pass_id,
            run_id=run_id,
            archived_at=self.clock.now(),
            archiver_version=__version__,
            facts=facts,
            objects=entries,
            slots=slots,
            decryption=self.opt.decryption,
            sse=self.opt.sse,
            kms_key_id=self.opt.kms_key_id,
            signing_key_id=self.signer.key_id,
            age_recipients=[str(r) for r in self.age_recipients],
        )
        data, digest = mf.manifest_bytes(doc, check=False)
        committed = await self._publish(pass_id, data, digest)
        if committed is not None:
            return committed
        puts = [*stored, sums]
        images = [s for s in specs if s.role == "image"]
        return PassResult(
            pass_id,
            Outcome.ARCHIVED,
            None,
            images=len(images) + len(earlier),
            image_bytes=sum(s.size for s in images) + sum(_plain_size(e) for e in earlier),
            objects_written=sum(1 for r in puts if not r.reused) + 2,
            objects_reused=sum(1 for r in puts if r.reused),
            manifest_key=self.layout.manifest(pass_id),
            manifest_sha256=digest,
        )

    # -- objects --------------------------------------------------------------------

    async def _bodies(self, specs: list[ObjectSpec]) -> list[bytes]:
        """What is stored for each spec: its data, or that encrypted to age."""

        async def one(spec: ObjectSpec) -> bytes:
            if not spec.encrypt:
                return spec.data
            body: bytes = await self.offload(pyrage.encrypt, spec.data, self.age_recipients)
            return body

        return list(await asyncio.gather(*(one(s) for s in specs)))

    async def stage(self, pass_id: str, specs: list[ObjectSpec]) -> None:
        """Store a read's images before the pass commits (a confirming read follows):
        a later read that answers a slot null still finds its image here."""
        bodies = await self._bodies(specs)
        hashes = [
            sha256_hex(b) if s.encrypt else s.sha256 for s, b in zip(specs, bodies, strict=True)
        ]
        await _all(
            [
                self._put(pass_id, s.key, b, h, s.content_type, adopt=s.adopt)
                for s, b, h in zip(specs, bodies, hashes, strict=True)
            ]
        )

    async def stored_image(self, pass_id: str, slot: str, seen: SlotSeen) -> ObjectEntry:
        """The manifest entry of an image :meth:`stage` stored for an earlier read,
        from what the store reports and what that read saw (``seen``)."""
        sealed = self.opt.decryption == "passthrough"
        age = bool(self.age_recipients)
        key, ctype = image_key(self.layout, pass_id, slot, sealed=sealed, age=age)
        info = await self.offload(self.store.head, key)
        if info is None:
            gone = "an image an earlier read stored is gone"
            raise ObjectNotFound(gone, key=key, pass_id=pass_id)
        sha = info.sha256
        if sha is None:
            sha = sha256_hex(await self.offload(self.store.get, key))
        if not age and sha != seen.sha256:
            raise ObjectConflict(
                "an image an earlier read stored has changed",
                key=key,
                existing_sha256=sha,
                new_sha256=seen.sha256,
                pass_id=pass_id,
            )
        entry = ObjectEntry("image", key, info.size, sha, ctype, info.version_id, slot=slot)
        entry = replace(entry, retain_until=info.retain_until, lock_mode=info.lock_mode)
        entry = replace(entry, width=seen.width, height=seen.height)
        if sealed:
            entry = replace(entry, payload=SEALED_PAYLOAD)
        if age:
            entry = replace(entry, plaintext_sha256=seen.sha256, plaintext_size=seen.size)
        return entry

    async def _put_objects(
        self,
        pass_id: str,
        specs: list[ObjectSpec],
        bodies: list[bytes],
        earlier: Sequence[ObjectEntry] = (),
    ) -> tuple[list[PutResult], PutResult]:
        """Put the objects and ``SHA256SUMS`` together; rewrite ``SHA256SUMS`` if an
        adopted object makes it differ from what is stored. ``earlier``: objects
        stored already, listed in ``SHA256SUMS`` too."""
        hashes = [
            sha256_hex(b) if s.encrypt else s.sha256 for s, b in zip(specs, bodies, strict=True)
        ]
        more_keys, more_hashes = [e.key for e in earlier], [e.sha256 for e in earlier]
        sums = self._sums([s.key for s in specs] + more_keys, hashes + more_hashes, pass_id)
        puts = [
            self._put(pass_id, s.key, b, h, s.content_type, adopt=s.adopt)
            for s, b, h in zip(specs, bodies, hashes, strict=True)
        ]
        puts.append(
            self._put(
                pass_id, self.layout.sums(pass_id), sums, sha256_hex(sums), SUMS_TYPE, adopt=True
            )
        )
        *stored, sums_put = await _all(puts)
        actual = self._sums(
            [r.key for r in stored] + more_keys, [r.sha256 for r in stored] + more_hashes, pass_id
        )
        if sums_put.sha256 != sha256_hex(actual):
            sums_put = await self._put(
                pass_id,
                self.layout.sums(pass_id),
                actual,
                sha256_hex(actual),
                SUMS_TYPE,
                overwrite=True,
            )
        return stored, sums_put

    def _sums(self, keys: list[str], hashes: list[str], pass_id: str) -> bytes:
        rel = [self.layout.relative(pass_id, k) for k in keys]
        return mf.sha256sums(list(zip(rel, hashes, strict=True)))

    # -- the commit marker ----------------------------------------------------------

    async def _publish(self, pass_id: str, data: bytes, digest: str) -> PassResult | None:
        """Put the signature, then the manifest. Returns the earlier commit's outcome
        when another worker committed the pass first, else None."""
        mkey = self.layout.manifest(pass_id)
        signature = self.signer.sign(data)
        sig_key, sig_sha = signature_key(mkey), sha256_hex(signature)
        replaced: bytes | None = None
        try:
            await self._put(pass_id, sig_key, signature, sig_sha, OCTET_TYPE)
        except ObjectConflict:
            existing = await self.existing(pass_id)
            if existing is not None:
                log.warning("manifest_committed_by_another_worker", key=mkey)
                return existing
            # A signature left by an attempt that never committed its manifest: the
            # manifest is not written yet, so a new signature version replaces it.
            replaced = await self._signature(sig_key)
            await self._put(pass_id, sig_key, signature, sig_sha, OCTET_TYPE, overwrite=True)
        try:
            await self._put(pass_id, mkey, data, digest, JSON_TYPE)
        except ObjectConflict:
            # Another worker committed this pass meanwhile (its lease outlived ours):
            # its manifest stands; ours, with other timestamps, is not written.
            existing = await self._committed_meanwhile(pass_id, replaced)
            if existing is None:
                raise
            log.warning("manifest_committed_by_another_worker", key=mkey)
            return existing
        return None

    async def _committed_meanwhile(self, pass_id: str, replaced: bytes | None) -> PassResult | None:
        """The outcome of the manifest another worker committed while we published.

        That worker put its signature before its manifest; when it did so before ours
        (``replaced``: the signature our put replaced), the signature now stored is
        ours, not of its manifest. If ``replaced`` is a trusted key's signature of the
        stored manifest, it is put back, and the manifest counts; else the stored
        manifest is judged as it is (:meth:`existing`)."""
        if replaced is not None:
            mkey = self.layout.manifest(pass_id)
            data: bytes = await self.offload(self.store.get, mkey)
            if any(v.verify(data, replaced) for v in self._trusted):
                sig_key, sig_sha = signature_key(mkey), sha256_hex(replaced)
                await self._put(pass_id, sig_key, replaced, sig_sha, OCTET_TYPE, overwrite=True)
                log.warning("signature_restored", key=sig_key)
        return await self.existing(pass_id)

    # -- one put --------------------------------------------------------------------

    def _lock(self) -> ObjectLock | None:
        if self.opt.lock_mode is None:
            return None
        until = self.clock.now() + timedelta(days=self.opt.lock_retain_days)
        return ObjectLock(self.opt.lock_mode, until)

    async def _put(
        self,
        pass_id: str,
        key: str,
        data: bytes,
        sha: str,
        ctype: str,
        *,
        adopt: bool = False,
        overwrite: bool = False,
    ) -> PutResult:
        try:
            async with self._put_slots:
                return await self.store.put_async(
                    key,
                    data,
                    sha256=sha,
                    content_type=ctype,
                    lock=self._lock(),
                    overwrite=overwrite,
                    offload=self.offload,
                )
        except ObjectConflict:
            if not adopt:
                raise
        # An earlier, interrupted attempt stored a different but genuine object at
        # this key and never wrote the manifest. Keep it and list it as it is.
        info = await self.offload(self.store.head, key)
        if info is None or info.sha256 is None:
            raise ObjectConflict(
                "object changed while being adopted",
                key=key,
                existing_sha256=None,
                new_sha256=sha,
                pass_id=pass_id,
            )
        log.warning("object_adopted", key=key)
        return PutResult.existing(info, info.sha256)


async def _all(puts: Sequence[Awaitable[PutResult]]) -> list[PutResult]:
    """Await every put, even when one fails (none is left running unobserved), then
    raise the first failure: a systemic one first, as it stops the run."""
    results = await asyncio.gather(*puts, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        systemic = [f for f in failures if isinstance(f, ArchiverError) and f.systemic]
        raise (systemic or failures)[0]
    return [r for r in results if isinstance(r, PutResult)]


def _plain_size(entry: ObjectEntry) -> int:
    return entry.plaintext_size if entry.plaintext_size is not None else entry.size


def _entry(put: PutResult, spec: ObjectSpec | None = None) -> ObjectEntry:
    """The manifest entry of a planned object (no ``spec``: ``SHA256SUMS``), from
    what the store reported."""
    stored = ObjectEntry("checksums", put.key, put.size, put.sha256, SUMS_TYPE, put.version_id)
    stored = replace(stored, retain_until=put.retain_until, lock_mode=put.lock_mode)
    if spec is None:
        return stored
    entry = replace(stored, role=spec.role, content_type=spec.content_type, slot=spec.slot)
    entry = replace(entry, width=spec.width, height=spec.height, payload=spec.payload)
    if not spec.encrypt:
        return entry
    return replace(entry, plaintext_sha256=spec.sha256, plaintext_size=spec.size)
