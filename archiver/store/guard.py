"""Telling one object's failure from the whole store's, for a run.

A :class:`~archiver.errors.StoreUnavailable` from one call may be that request's
(a reset, a throttled put) or the store's (the endpoint down, S3 killed mid-run, a
storm of 5xx answers). A pass retries the first kind on a later run; the second is
systemic (``errors.py``: "the pipeline treats a run in which the store is
unreachable for every pass as a systemic failure"): every pass would fail the same
way and spend an attempt for nothing.

:class:`ReachabilityGuard` wraps a run's store. When a call fails unavailable, it
asks the store about one known object (a HEAD of ``probe_key``, retried as every
call is). If that fails unavailable too, the store is unreachable: the error is
raised marked systemic, and so is every later call, at once and without a request,
so the pipeline stops the run (exit 3) and gives the passes in flight back without
spending their attempts. If the store answers, the failure was the request's: it is
raised as it was, and the pass retries.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import structlog

from archiver.errors import StoreError, StoreUnavailable
from archiver.store import ObjectInfo, ObjectLock, ObjectStore, ObjectVersion, Offload, PutResult

T = TypeVar("T")

log = structlog.get_logger("archiver.store")


def unreachable(message: str, key: str | None = None) -> StoreUnavailable:
    """A StoreUnavailable that stops the run: the store is down, not one request."""
    exc = StoreUnavailable(f"the store is unreachable: {message}", key=key)
    exc.systemic = True  # errors.py: StoreUnavailable is systemic when it holds for every pass
    return exc


class ReachabilityGuard:
    """An :class:`~archiver.store.ObjectStore` that raises systemic errors once the
    store it wraps is unreachable (see the module docstring). Thread-safe."""

    def __init__(self, store: ObjectStore, *, probe_key: str) -> None:
        self.store = store
        self.probe_key = probe_key
        self._down: str | None = None  # why the store is judged unreachable
        self._lock = threading.Lock()

    @property
    def down(self) -> str | None:
        """Why the store was judged unreachable, or None while it answers."""
        return self._down

    def _refuse_if_down(self) -> None:
        if self._down is not None:
            raise unreachable(self._down)

    def judge(self, exc: StoreUnavailable) -> StoreUnavailable | None:
        """After ``exc``: the systemic error to raise instead, or None when the store
        still answers (one probe at a time; the others wait for its verdict)."""
        with self._lock:
            if self._down is None:
                try:
                    self.store.head(self.probe_key)
                except StoreUnavailable:
                    self._down = str(exc)
                    log.error("store_unreachable", reason=exc.reason, error=str(exc))
                except StoreError:
                    pass  # it answered (with a refusal the caller will meet itself)
            return unreachable(self._down, exc.key) if self._down is not None else None

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self._refuse_if_down()
        try:
            return fn(*args, **kwargs)
        except StoreUnavailable as exc:
            down = self.judge(exc)
            if down is None:
                raise
            raise down from exc

    # --- the ObjectStore contract ----------------------------------------------------

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
        return self._call(
            self.store.put,
            key,
            data,
            sha256=sha256,
            content_type=content_type,
            lock=lock,
            overwrite=overwrite,
        )

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
        self._refuse_if_down()
        try:
            return await self.store.put_async(
                key,
                data,
                sha256=sha256,
                content_type=content_type,
                lock=lock,
                overwrite=overwrite,
                offload=offload,
            )
        except StoreUnavailable as exc:
            down = await offload(self.judge, exc)  # the probe blocks: off the event loop
            if down is None:
                raise
            raise down from exc

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        return self._call(self.store.head, key, version_id=version_id)

    def get(self, key: str, *, version_id: str | None = None) -> bytes:
        return self._call(self.store.get, key, version_id=version_id)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        return self._listing(self.store.list, prefix)

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        return self._listing(self.store.list_versions, prefix)

    def _listing(self, fn: Callable[[str], Iterator[T]], prefix: str) -> Iterator[T]:
        """A listing as :meth:`_call` makes a call: judged when it fails part-way."""
        self._refuse_if_down()
        try:
            yield from fn(prefix)
        except StoreUnavailable as exc:
            down = self.judge(exc)
            if down is None:
                raise
            raise down from exc

    def close(self) -> None:
        """Nothing of its own: the wrapped store belongs to whoever opened it."""
