"""The archive store: the only code that speaks S3.

Contract of :class:`ObjectStore` (every implementation, real or in memory, passes
``tests/store/test_conformance.py``):

* ``put`` is a conditional create. If the key is free the object is written,
  encrypted and with its SHA-256 as the S3 checksum, and ``PutResult.reused`` is
  False. If the key already holds the *same* bytes (same SHA-256) nothing is written
  and ``reused`` is True. If it holds other bytes, :class:`~archiver.errors.ObjectConflict`
  is raised and nothing is replaced.
* every write is encrypted server-side (``aws:kms`` with a key id by default, or
  ``AES256``); a write the server reports as unencrypted raises
  :class:`~archiver.errors.EncryptionRefused`.
* ``head`` returns ``None`` for a missing key or version; ``get`` raises
  :class:`~archiver.errors.ObjectNotFound` for one. These two are the only ways the
  store says "not there".
* every other failure is another :class:`~archiver.errors.StoreError` subclass, and
  says nothing about whether the object exists: refused credentials are
  :class:`~archiver.errors.StoreAccessDenied`, retryable failures (unreachable,
  server errors, throttling) :class:`~archiver.errors.StoreUnavailable`.
* ``put_async`` is ``put`` for an asyncio caller, with the same outcomes; it runs
  whatever blocks through the ``offload`` it is given (the pipeline's thread pool).
  The S3 store sends CRT puts without a thread; the memory store offloads ``put``.
* implementations are thread-safe: the pipeline calls them from a thread pool.
* ``list_versions`` yields every version *and delete marker* under a prefix, in key
  order, with ``is_latest`` set on the entry S3 serves: a key whose latest
  entry is a delete marker is hidden from ``list``, ``head`` and ``get`` but still
  there, and ``verify`` must see it (a delete without a version id is allowed under
  COMPLIANCE retention).
* ``close`` releases what the store holds open (connections, the CRT client). It may
  be called more than once; the store is not used after it. What was stored stays.

The contract is the archive's reads and writes only. Bucket-level operations, which
only ``doctor`` needs (bucket settings, deleting its scratch object), are in
:mod:`archiver.store.bucket`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from archiver.errors import EncryptionRefused, ObjectConflict

#: Runs ``fn(*args, **kwargs)`` off the event loop (in a thread) and returns its result.
Offload = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class ObjectLock:
    """Object Lock retention for a new object version."""

    mode: Literal["COMPLIANCE", "GOVERNANCE"]
    retain_until: datetime


@dataclass(frozen=True, slots=True)
class PutResult:
    key: str
    size: int
    sha256: str  # hex
    version_id: str | None
    reused: bool
    retain_until: datetime | None = None
    lock_mode: str | None = None

    @classmethod
    def existing(cls, info: ObjectInfo, sha256: str) -> PutResult:
        """The result of a put that kept the object already stored (``reused``)."""
        return cls(
            key=info.key,
            size=info.size,
            sha256=sha256,
            version_id=info.version_id,
            reused=True,
            retain_until=info.retain_until,
            lock_mode=info.lock_mode,
        )


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    sha256: str | None  # hex, from the stored S3 checksum; None if the object has none
    encryption: str | None  # "aws:kms", "AES256" or None
    kms_key_id: str | None = None
    version_id: str | None = None
    content_type: str | None = None
    last_modified: datetime | None = None
    lock_mode: str | None = None
    retain_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class ObjectVersion:
    """One entry of a versions listing: a stored version or a delete marker."""

    key: str
    version_id: str | None
    is_latest: bool
    delete_marker: bool
    size: int = 0
    last_modified: datetime | None = None


class ObjectStore(Protocol):
    """A narrow, thread-safe object store. See the module docstring for the contract."""

    def put(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        content_type: str,
        lock: ObjectLock | None = None,
        overwrite: bool = False,
    ) -> PutResult: ...

    async def put_async(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        content_type: str,
        lock: ObjectLock | None = None,
        overwrite: bool = False,
        offload: Offload,
    ) -> PutResult: ...

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None: ...

    def get(self, key: str, *, version_id: str | None = None) -> bytes: ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]: ...

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]: ...

    def close(self) -> None: ...


class OffloadedPut:
    """``put_async`` for a store whose ``put`` is blocking: ``put`` run through
    ``offload`` (the memory store's faults may sleep; the S3 store's botocore puts)."""

    put: Callable[..., PutResult]  # the store's own, blocking put

    async def put_async(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        content_type: str,
        lock: ObjectLock | None = None,
        overwrite: bool = False,
        offload: Offload,
    ) -> PutResult:
        result: PutResult = await offload(
            self.put,
            key,
            data,
            sha256=sha256,
            content_type=content_type,
            lock=lock,
            overwrite=overwrite,
        )
        return result


def reuse_existing(where: str, info: ObjectInfo, stored_sha256: str, sha256: str) -> PutResult:
    """A put found its key taken by ``info`` (whose content hashes to ``stored_sha256``):
    keep that object if it holds our bytes, encrypted; otherwise refuse.

    Raises :class:`ObjectConflict` for other content, :class:`EncryptionRefused` for
    our content stored unencrypted. ``where`` starts the message (``"S3 put b/k"``).
    """
    if stored_sha256 != sha256:
        raise ObjectConflict(
            f"{where}: the key holds other content (sha256 {stored_sha256}, ours {sha256})",
            key=info.key,
            existing_sha256=stored_sha256,
            new_sha256=sha256,
        )
    if not info.encryption:
        raise EncryptionRefused(
            f"{where}: the existing object with our content is stored unencrypted; "
            "it cannot be reused",
            key=info.key,
        )
    return PutResult.existing(info, sha256)
