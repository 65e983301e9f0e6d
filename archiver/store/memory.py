"""An in-memory :class:`~archiver.store.ObjectStore` for fast unit tests.

It keeps the same contract as :class:`~archiver.store.s3.S3Store` (the conformance
suite in ``tests/store/test_conformance.py`` runs against both) and behaves like a
versioned S3 bucket: every write that is not refused adds a version with an opaque id;
a reused or conflicting put adds none. A put whose ``sha256`` does not match the bytes
is refused as S3 refuses it (BadDigest), with :class:`~archiver.errors.StoreUnavailable`.

For tests it can also say how often each key was written (``versions_per_key``, the
same shape as :meth:`archiver.sandbox.seaweedfs.SeaweedFS.versions_per_key`) and how
often ``put`` was called (``put_calls``), write around the contract (``backdoor_put``,
``delete_marker``),
and fail on demand (``fault``: called with the operation and key before each call; it
may raise any :class:`~archiver.errors.StoreError`).
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from archiver.clock import Clock, SystemClock
from archiver.errors import EncryptionRefused, ObjectNotFound, StoreUnavailable
from archiver.store import (
    ObjectInfo,
    ObjectLock,
    ObjectVersion,
    OffloadedPut,
    PutResult,
    reuse_existing,
)

__all__ = ["MemoryStore"]

Fault = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class _Version:
    data: bytes
    sha256: str | None  # the stored checksum; None when written without one
    version_id: str
    content_type: str
    last_modified: datetime
    encryption: str | None
    kms_key_id: str | None
    lock: ObjectLock | None = None
    marker: bool = False  # a delete marker: no content, hides the versions before it

    def info(self, key: str) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=len(self.data),
            sha256=self.sha256,
            encryption=self.encryption,
            kms_key_id=self.kms_key_id,
            version_id=self.version_id,
            content_type=self.content_type,
            last_modified=self.last_modified,
            lock_mode=self.lock.mode if self.lock else None,
            retain_until=self.lock.retain_until if self.lock else None,
        )


class MemoryStore(OffloadedPut):
    """A versioned, encrypted-looking bucket in a dict. Thread-safe."""

    def __init__(
        self,
        *,
        sse: Literal["aws:kms", "AES256", "SSE-C"] = "aws:kms",
        kms_key_id: str | None = "archive-key",
        clock: Clock | None = None,
        fault: Fault | None = None,
    ) -> None:
        if sse == "aws:kms" and not kms_key_id:
            raise EncryptionRefused("sse aws:kms needs a kms_key_id")
        self.sse = sse
        self.kms_key_id = kms_key_id if sse == "aws:kms" else None
        self.fault = fault
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._objects: dict[str, builtins.list[_Version]] = {}  # key -> versions, oldest first
        self._put_calls: Counter[str] = Counter()

    # --- the ObjectStore contract --------------------------------------------------

    def put(
        self,
        key: str,
        data: bytes,
        *,
        sha256: str,
        content_type: str,
        lock: ObjectLock | None = None,
        overwrite: bool = False,
    ) -> PutResult:
        sha256 = sha256.lower()
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        data = bytes(data)
        with self._lock:
            self._put_calls[key] += 1
        self._fault("put", key)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreUnavailable(
                f"memory put {key}: BadDigest (the bytes do not match the SHA-256)", key=key
            )
        with self._lock:
            versions = self._objects.get(key)
            if versions and not versions[-1].marker and not overwrite:
                current = versions[-1]
                stored = current.sha256 or hashlib.sha256(current.data).hexdigest()
                return reuse_existing(f"memory put {key}", current.info(key), stored, sha256)
            version = self._new_version(data, sha256, content_type, self.sse, self.kms_key_id)
            version = dataclasses.replace(version, lock=lock)
            self._objects.setdefault(key, []).append(version)
            return PutResult(
                key,
                len(data),
                sha256,
                version.version_id,
                reused=False,
                retain_until=lock.retain_until if lock else None,
                lock_mode=lock.mode if lock else None,
            )

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        self._fault("head", key)
        with self._lock:
            version = self._find(key, version_id)
        return version.info(key) if version else None

    def get(self, key: str, *, version_id: str | None = None) -> bytes:
        self._fault("get", key)
        with self._lock:
            version = self._find(key, version_id)
        if version is None:
            raise ObjectNotFound(f"memory get {key}: no such object", key=key)
        return version.data

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        self._fault("list", prefix)
        with self._lock:
            found = sorted(
                (k, v[-1])
                for k, v in self._objects.items()
                if k.startswith(prefix) and not v[-1].marker
            )
        for key, version in found:
            yield ObjectInfo(
                key=key,
                size=len(version.data),
                sha256=None,
                encryption=None,
                last_modified=version.last_modified,
            )

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        self._fault("list_versions", prefix)
        with self._lock:
            found = sorted((k, v[:]) for k, v in self._objects.items() if k.startswith(prefix))
        for key, versions in found:
            for i, version in enumerate(reversed(versions)):
                yield ObjectVersion(
                    key=key,
                    version_id=version.version_id,
                    is_latest=i == 0,
                    delete_marker=version.marker,
                    size=len(version.data),
                    last_modified=version.last_modified,
                )

    def close(self) -> None:
        """Nothing to release: the store holds no connection or file, only the dict.
        It does nothing, and the objects stay readable, as a bucket's stay after its
        client is closed."""

    # --- for tests ------------------------------------------------------------------

    def put_calls(self, key: str) -> int:
        """How many times ``put`` was called for ``key`` (written, reused or refused)."""
        with self._lock:
            return self._put_calls[key]

    def versions_per_key(self, prefix: str = "") -> dict[str, int]:
        """How many versions each key under ``prefix`` holds: the writes that happened."""
        with self._lock:
            return {k: len(v) for k, v in sorted(self._objects.items()) if k.startswith(prefix)}

    def backdoor_put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        checksum: bool = True,
        encrypted: bool = True,
    ) -> str:
        """Write a new version as another writer could: unconditionally, optionally
        without a stored checksum or unencrypted. Returns the version id."""
        sha = hashlib.sha256(data).hexdigest() if checksum else None
        sse, kms = (self.sse, self.kms_key_id) if encrypted else (None, None)
        with self._lock:
            version = self._new_version(bytes(data), sha, content_type, sse, kms)
            self._objects.setdefault(key, []).append(version)
        return version.version_id

    def delete_marker(self, key: str) -> str:
        """Delete ``key`` as a versioned bucket does for a delete without a version id
        (which Object Lock allows): a delete marker over its versions, which stay.
        Returns the marker's version id."""
        with self._lock:
            marker = dataclasses.replace(self._new_version(b"", None, "", None, None), marker=True)
            self._objects.setdefault(key, []).append(marker)
        return marker.version_id

    def remove(self, key: str) -> None:
        """Drop every version of ``key`` (a missing object, as verification may find)."""
        with self._lock:
            self._objects.pop(key, None)

    # --- internals --------------------------------------------------------------------

    def _fault(self, operation: str, key: str) -> None:
        if self.fault is not None:
            self.fault(operation, key)

    def _find(self, key: str, version_id: str | None) -> _Version | None:
        versions = self._objects.get(key, [])
        if version_id is None:
            found = versions[-1] if versions else None
        else:
            found = next((v for v in versions if v.version_id == version_id), None)
        return None if found is None or found.marker else found

    def _new_version(
        self,
        data: bytes,
        sha256: str | None,
        content_type: str,
        encryption: str | None,
        kms_key_id: str | None,
    ) -> _Version:
        return _Version(
            data=data,
            sha256=sha256,
            version_id=uuid.uuid4().hex,
            content_type=content_type,
            last_modified=self._clock.now().astimezone(UTC),
            encryption=encryption,
            kms_key_id=kms_key_id,
        )
