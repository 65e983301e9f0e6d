"""Bucket-level operations for ``doctor``'s preflight: not part of the archive store.

The archive's reads and writes go through :class:`~archiver.store.ObjectStore`.
Before the first run, ``doctor`` also asks about the bucket itself (does it exist, its
default encryption, versioning, Object Lock, the server's clock) and deletes the
scratch object its round trip wrote. Nothing else needs these, and the archiver
never deletes archive objects, so they live here, on a client of their own made like
the store's (:func:`~archiver.store.s3.make_client`: the same settings, credentials
and retries), with the store's error translation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

from botocore import exceptions as bex

from archiver.config import StorageSettings
from archiver.errors import StoreAccessDenied
from archiver.store.s3 import error_code, make_client, raise_store_error

__all__ = ["BucketInspector", "BucketState"]

_NO_BUCKET_CODES = frozenset({"404", "NoSuchBucket", "NotFound"})
# A bucket without that configuration: S3's "not found" answers for each (or a bare 404).
_NO_ENCRYPTION_CODES = frozenset({"ServerSideEncryptionConfigurationNotFoundError", "404"})
_NO_LOCK_CODES = frozenset({"ObjectLockConfigurationNotFoundError", "404"})


@dataclass(frozen=True, slots=True)
class BucketState:
    """Bucket-level settings, for the preflight check."""

    default_encryption: str | None
    versioning: str | None
    object_lock: bool
    default_lock_mode: str | None
    server_time: datetime | None


class BucketInspector:
    """Reads one bucket's settings and deletes doctor's scratch object. Every failure
    is a :class:`~archiver.errors.StoreError`; a missing bucket is
    :class:`~archiver.errors.StoreAccessDenied`."""

    def __init__(self, settings: StorageSettings, *, credentials: tuple[str, str] | None = None):
        self.bucket = settings.bucket
        _, self._client = make_client(settings, credentials)  # the store's retries

    def check(self) -> None:
        """Fail fast if the bucket is missing or refuses us (HEAD of a missing bucket is
        indistinguishable from a missing key, so the store's ``head`` cannot tell)."""
        self._head_bucket()

    def state(self) -> BucketState:
        """Default encryption, versioning, Object Lock and the server's clock."""
        date = self._head_bucket().get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        client = self._client
        encryption = self._ask(
            "get-bucket-encryption", client.get_bucket_encryption, _NO_ENCRYPTION_CODES
        )
        rules = encryption["ServerSideEncryptionConfiguration"]["Rules"] if encryption else []
        versioning = self._ask("get-bucket-versioning", client.get_bucket_versioning, frozenset())
        lock = self._ask(
            "get-object-lock-configuration", client.get_object_lock_configuration, _NO_LOCK_CODES
        )
        lock_config = lock["ObjectLockConfiguration"] if lock else {}
        return BucketState(
            default_encryption=(
                rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] if rules else None
            ),
            versioning=versioning.get("Status") if versioning else None,
            object_lock=lock_config.get("ObjectLockEnabled") == "Enabled",
            default_lock_mode=lock_config.get("Rule", {}).get("DefaultRetention", {}).get("Mode"),
            server_time=parsedate_to_datetime(date) if date else None,
        )

    def delete(self, key: str, *, version_id: str | None = None) -> None:
        """Delete one object version: doctor's scratch object, nothing else."""
        try:
            if version_id is not None:
                self._client.delete_object(Bucket=self.bucket, Key=key, VersionId=version_id)
            else:
                self._client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            self._raise(exc, "delete", key)

    def close(self) -> None:
        """Release the client's connection pool."""
        self._client.close()

    # --- internals --------------------------------------------------------------------

    def _head_bucket(self) -> dict[str, Any]:
        try:
            return dict(self._client.head_bucket(Bucket=self.bucket))
        except bex.ClientError as exc:
            if error_code(exc) in _NO_BUCKET_CODES:
                raise StoreAccessDenied(
                    f"S3 bucket {self.bucket} does not exist ({error_code(exc)})"
                ) from exc
            self._raise(exc, "head-bucket", "")
        except Exception as exc:
            self._raise(exc, "head-bucket", "")

    def _ask(
        self, operation: str, call: Callable[..., Any], absent: frozenset[str]
    ) -> dict[str, Any] | None:
        """``call``'s answer for the bucket; None when S3 answers with one of the
        ``absent`` codes: the bucket has no such configuration."""
        try:
            return dict(call(Bucket=self.bucket))
        except bex.ClientError as exc:
            if error_code(exc) in absent:
                return None
            self._raise(exc, operation, "")
        except Exception as exc:
            self._raise(exc, operation, "")

    def _raise(self, exc: Exception, operation: str, key: str) -> NoReturn:
        raise_store_error(exc, operation, self.bucket, key)
