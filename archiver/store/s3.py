"""The S3 implementation of :class:`~archiver.store.ObjectStore`: the only code that speaks S3.

One botocore client per store, shared by the pipeline's upload threads (clients are
thread-safe; sessions are not, so the store makes its own session once). Every write is
a conditional create (``If-None-Match: *``) carrying the SHA-256 we computed as the S3
checksum and the configured server-side encryption; the server's answer is checked, and
a write reported as unencrypted is refused.

Errors are translated here, by :func:`raise_store_error` (which the bucket inspector in
:mod:`archiver.store.bucket` shares), and nowhere else: no botocore exception leaves
these two modules.

    NoSuchKey, NoSuchVersion, 404 on a HEAD or GET           -> head: None, get: ObjectNotFound
    AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch,
    expired or missing credentials, any other 403           -> StoreAccessDenied
    NoSuchBucket                                              -> StoreAccessDenied
    5xx, SlowDown and other throttling, RequestTimeout,
    BadDigest, connection refused/closed, timeouts            -> StoreUnavailable
    anything else                                             -> StoreError

Messages carry the operation, the bucket/key, the S3 error code and the HTTP status;
never a request or response body.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, cast

import botocore.loaders
import botocore.session
import orjson
from botocore import exceptions as bex
from botocore.config import Config

from archiver.config import StorageSettings
from archiver.errors import (
    EncryptionRefused,
    ObjectNotFound,
    StoreAccessDenied,
    StoreError,
    StoreUnavailable,
)
from archiver.store import (
    ObjectInfo,
    ObjectLock,
    ObjectVersion,
    Offload,
    OffloadedPut,
    PutResult,
    reuse_existing,
)
from archiver.store.crt import CrtPutter, PutTransportError, url_maker

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        PutObjectRequestTypeDef,
    )

__all__ = ["S3Store", "error_code", "make_client", "raise_store_error"]

# A conditional put lost to an existing object. AWS answers 412 PreconditionFailed, or
# 409 ConditionalRequestConflict while a concurrent conditional write is in flight.
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NoSuchVersion", "NotFound"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ACCESS_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_UNAVAILABLE_CODES = frozenset(
    {
        "BadDigest",
        "InternalError",
        "OperationAborted",
        "RequestLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
    }
)
# Transport failures: the request did not complete. Retrying later may succeed.
_TRANSPORT_ERRORS: tuple[type[Exception], ...] = (
    bex.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, SSLError, proxy
    bex.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bex.IncompleteReadError,
    bex.FlexibleChecksumError,  # the bytes read do not match the checksum S3 sent with them
    bex.ChecksumError,
)
_CREDENTIAL_ERRORS: tuple[type[Exception], ...] = (
    bex.NoCredentialsError,
    bex.PartialCredentialsError,
    bex.CredentialRetrievalError,
    bex.TokenRetrievalError,
)


class _FastJSONFileLoader(botocore.loaders.JSONFileLoader):
    """botocore's model files, parsed by orjson.

    botocore parses its JSON models (S3's service model, endpoint rules, partitions)
    with ``json.loads(..., object_pairs_hook=OrderedDict)``: 40 of the 80 ms it takes to
    create an S3 client, paid by every run. orjson's plain dicts keep the same key
    order. The loader is botocore's documented extension point (a session component),
    and a file it cannot parse this way is left to botocore's own loader.
    """

    def _load_file(self, full_path: str, open_method: Any) -> Any:
        if not os.path.isfile(full_path):
            return None
        with open_method(full_path, "rb") as fp:
            payload = fp.read()
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            return super()._load_file(full_path, open_method)  # type: ignore[misc]


def _session() -> botocore.session.Session:
    """A botocore session (boto3's resource layer is not used) with the fast loader."""
    session = botocore.session.Session()
    loader = botocore.loaders.create_loader(session.get_config_variable("data_path"))
    loader.file_loader = _FastJSONFileLoader()
    session.register_component("data_loader", loader)
    return session


def _crt_answer(got: dict[str, str]) -> dict[str, Any]:
    """The CRT's response headers in botocore's shape (the fields the store reads)."""
    return {
        "VersionId": got.get("x-amz-version-id"),
        "ServerSideEncryption": got.get("x-amz-server-side-encryption"),
        "SSECustomerAlgorithm": got.get("x-amz-server-side-encryption-customer-algorithm"),
    }


def _b64_digest(sha256_hex: str) -> str:
    """The S3 ``ChecksumSHA256`` form (base64 of the raw digest) of a hex SHA-256."""
    try:
        raw = bytes.fromhex(sha256_hex)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError("sha256 must be 64 hexadecimal characters")
    return base64.b64encode(raw).decode("ascii")


def _hex_digest(checksum: str | None, checksum_type: str | None) -> str | None:
    """A full-object ``ChecksumSHA256`` as hex; None if absent or composite (multipart)."""
    if not checksum or checksum_type == "COMPOSITE" or "-" in checksum:
        return None
    try:
        raw = base64.b64decode(checksum, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def _utc(value: datetime | None) -> datetime | None:
    return value.astimezone(UTC) if value is not None else None


def _client_config(settings: StorageSettings, max_attempts: int) -> Config:
    config_args: dict[str, Any] = {
        "region_name": settings.region,
        "max_pool_connections": settings.max_pool_connections,
        # total_max_attempts counts the first try; botocore's "max_attempts" would not.
        # "legacy" mode: exponential backoff on throttling, 5xx and connection
        # errors, with no client-wide retry quota. "standard" mode's quota is only
        # refilled by 2xx answers, and the archiver's normal answers include 404
        # (no manifest yet) and 412 (object exists): in a long process the quota
        # ran dry and retries silently stopped (found by the S3 fault proxy tests).
        "retries": {"mode": "legacy", "total_max_attempts": max_attempts},
        "connect_timeout": settings.connect_timeout_seconds,
        "read_timeout": settings.read_timeout_seconds,
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        # Every request is built here from typed values: botocore's own parameter
        # validation only costs CPU on each of the ~16 requests a pass.
        "parameter_validation": False,
    }
    # Every put carries the SHA-256 of its body in the signed x-amz-checksum-sha256
    # header, which S3 checks: hashing each body again for the SigV4 payload hash
    # (botocore's default whenever it did not compute the checksum itself) would
    # only cost CPU.
    s3_config: dict[str, Any] = {"payload_signing_enabled": False}
    if settings.endpoint_url:
        s3_config["addressing_style"] = "path"
    config_args["s3"] = s3_config
    return Config(**config_args)


def make_client(
    settings: StorageSettings, credentials: tuple[str, str] | None, max_attempts: int = 5
) -> tuple[botocore.session.Session, S3Client]:
    """A botocore session and S3 client for ``settings`` (the store's, and the bucket
    inspector's in :mod:`archiver.store.bucket`). ``credentials`` (access key, secret
    key) are for the demo and the tests; without them botocore's normal chain applies.
    """
    access_key, secret_key = credentials if credentials else (None, None)
    session = _session()
    try:  # resolves the credentials now: half of them set raises here
        client = session.create_client(
            "s3",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url,
            verify=settings.verify_tls,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=_client_config(settings, max_attempts),
        )
    except _CREDENTIAL_ERRORS as exc:
        raise_store_error(exc, "client", settings.bucket, "")
    return session, client  # type: ignore[return-value]


class S3Store(OffloadedPut):
    """An :class:`~archiver.store.ObjectStore` on one S3 bucket. Thread-safe.

    ``credentials`` (access key, secret key) are for the demo and the tests; without
    them botocore's normal chain applies (environment, profile, IRSA, instance role).
    ``max_attempts`` is the number of tries per request, the first included (botocore's
    legacy retry mode, see :func:`_client_config`: exponential backoff on throttling,
    5xx and connection errors).
    """

    def __init__(
        self,
        settings: StorageSettings,
        *,
        credentials: tuple[str, str] | None = None,
        max_attempts: int = 5,
    ) -> None:
        if settings.sse == "aws:kms" and not settings.kms_key_id:
            raise EncryptionRefused("sse aws:kms needs a kms_key_id")  # settings refuse it too
        self.settings = settings
        self.bucket = settings.bucket
        self._sse_c: dict[str, Any] = {}
        if settings.sse == "SSE-C":
            if settings.sse_customer_key is None:
                raise EncryptionRefused("sse SSE-C needs a customer key")
            self._sse_c = {
                "SSECustomerAlgorithm": "AES256",
                "SSECustomerKey": base64.b64decode(settings.sse_customer_key.get_secret_value()),
            }
        self._static_credentials = credentials
        self._max_attempts = max_attempts
        self._putter: CrtPutter | None = None
        self._putter_lock = threading.Lock()
        self._session, self._client = make_client(settings, credentials, max_attempts)

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
        """Create ``key`` unless it exists; reuse it if it holds the same bytes.

        ``overwrite`` writes a new version even if the key exists (only for a detached
        signature whose manifest was never committed); ``lock`` sets Object Lock
        retention on the new version.
        """
        sha256 = sha256.lower()
        request = self._put_request(key, data, sha256, content_type, lock, overwrite)
        for _ in range(2):
            try:
                resp = self._put_object(request)
            except bex.ClientError as exc:
                self._unless_exists(exc, key)
                existing = self._existing(key, data, sha256)
                if existing is not None:
                    return existing
                continue  # the object vanished between the refusal and our HEAD: try again
            except Exception as exc:
                self._raise(exc, "put", key)
            return self._put_result(resp, key, data, sha256, lock)
        self._vanished(key)

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
        """:meth:`put` for the pipeline's event loop. Through the CRT the PutObject
        itself needs no thread (see :meth:`CrtPutter.put_async`); what may block (the
        first put, which makes the CRT client, a HEAD after a refused put, botocore
        puts, credentials that are due a refresh) is run through ``offload``."""
        if self.settings.put_client == "botocore":
            return await super().put_async(
                key,
                data,
                sha256=sha256,
                content_type=content_type,
                lock=lock,
                overwrite=overwrite,
                offload=offload,
            )
        sha256 = sha256.lower()
        request = self._put_request(key, data, sha256, content_type, lock, overwrite)
        putter = self._putter or cast(CrtPutter, await offload(self._crt))
        for _ in range(2):
            try:
                if self._credentials_due():
                    await offload(self._credentials)  # refreshes, or raises botocore's error
                got = await putter.put_async(key, data, _put_headers(request))
            except bex.ClientError as exc:
                self._unless_exists(exc, key)
                existing = await offload(self._existing, key, data, sha256)
                if existing is not None:
                    return cast(PutResult, existing)
                continue
            except Exception as exc:
                self._raise(exc, "put", key)
            return self._put_result(_crt_answer(got), key, data, sha256, lock)
        self._vanished(key)

    def _put_request(
        self,
        key: str,
        data: bytes,
        sha256: str,
        content_type: str,
        lock: ObjectLock | None,
        overwrite: bool,
    ) -> PutObjectRequestTypeDef:
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "ChecksumSHA256": _b64_digest(sha256),
        }
        if self._sse_c:
            request.update(self._sse_c)  # type: ignore[typeddict-item]
        else:
            request["ServerSideEncryption"] = self.settings.sse  # type: ignore[typeddict-item]
        if not overwrite:
            request["IfNoneMatch"] = "*"
        if self.settings.sse == "aws:kms" and self.settings.kms_key_id:
            request["SSEKMSKeyId"] = self.settings.kms_key_id
        if lock is not None:
            request["ObjectLockMode"] = lock.mode
            request["ObjectLockRetainUntilDate"] = lock.retain_until
        return request

    def _unless_exists(self, exc: bex.ClientError, key: str) -> None:
        """A refused put: return if S3 refused it because the key exists, else raise."""
        if error_code(exc) not in _EXISTS_CODES and _status(exc) != 412:
            self._raise(exc, "put", key)

    def _put_result(
        self, resp: dict[str, Any], key: str, data: bytes, sha256: str, lock: ObjectLock | None
    ) -> PutResult:
        """A stored put, once S3's answer shows the encryption we asked for."""
        got = (
            "SSE-C"
            if resp.get("SSECustomerAlgorithm") == "AES256"
            else resp.get("ServerSideEncryption")
        )
        if got != self.settings.sse:
            raise EncryptionRefused(
                f"S3 put {self.bucket}/{key}: the server reported encryption "
                f"{got or 'none'}, not {self.settings.sse}",
                key=key,
            )
        return PutResult(
            key=key,
            size=len(data),
            sha256=sha256,
            version_id=resp.get("VersionId"),
            reused=False,
            retain_until=lock.retain_until if lock is not None else None,
            lock_mode=lock.mode if lock is not None else None,
        )

    def _vanished(self, key: str) -> NoReturn:
        raise StoreUnavailable(
            f"S3 put {self.bucket}/{key}: refused as existing, but the object is not there",
            key=key,
        )

    def _read_request(self, key: str, version_id: str | None) -> dict[str, Any]:
        """HEAD/GET parameters: stored checksum returned, the SSE-C key if used."""
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "ChecksumMode": "ENABLED"}
        if version_id:
            request["VersionId"] = version_id
        request.update(self._sse_c)
        return request

    def _put_object(self, request: PutObjectRequestTypeDef) -> dict[str, Any]:
        """One PutObject: through the CRT (see :mod:`archiver.store.crt`) unless
        ``storage.put_client`` is ``botocore``. The answer in botocore's shape (the fields
        the store reads)."""
        if self.settings.put_client == "botocore":
            return dict(self._client.put_object(**request))
        self._credentials()  # missing credentials: botocore's error, before the CRT
        got = self._crt().put(request["Key"], cast(bytes, request["Body"]), _put_headers(request))
        return _crt_answer(got)

    def _crt(self) -> CrtPutter:
        with self._putter_lock:
            if self._putter is None:
                probe = "idpass-archiver/url-probe"
                presigned = self._client.generate_presigned_url(
                    "put_object", Params={"Bucket": self.bucket, "Key": probe}, ExpiresIn=60
                )
                self._putter = CrtPutter(
                    url_for=url_maker(presigned, probe),
                    region=self.settings.region,
                    credentials=self._credentials,
                    verify_tls=self.settings.verify_tls,
                    connect_timeout=self.settings.connect_timeout_seconds,
                    read_timeout=self.settings.read_timeout_seconds,
                    max_attempts=self._max_attempts,
                    max_connections=self.settings.max_pool_connections,
                )
            return self._putter

    def _credentials_due(self) -> bool:
        """Would :meth:`_credentials` do I/O (none yet, or temporary ones to refresh)?
        Static and environment credentials never are."""
        if self._static_credentials is not None:
            return False
        found = self._session.get_credentials()
        if found is None:
            return True  # let _credentials raise botocore's error
        refresh_needed = getattr(found, "refresh_needed", None)
        return bool(refresh_needed()) if refresh_needed is not None else False

    def _credentials(self) -> tuple[str, str, str | None]:
        """botocore's credentials now (refreshed as botocore refreshes them)."""
        if self._static_credentials is not None:
            return (*self._static_credentials, None)
        found = self._session.get_credentials()
        if found is None:
            raise bex.NoCredentialsError()
        frozen = found.get_frozen_credentials()
        if not frozen.access_key or not frozen.secret_key:
            raise bex.PartialCredentialsError(provider="botocore", cred_var="secret_key")
        return frozen.access_key, frozen.secret_key, frozen.token

    def head(self, key: str, *, version_id: str | None = None) -> ObjectInfo | None:
        """What S3 knows about ``key`` (the latest version, or ``version_id``); None if absent."""
        try:
            resp = self._client.head_object(**self._read_request(key, version_id))
        except bex.ClientError as exc:
            if error_code(exc) in _NOT_FOUND_CODES:
                return None
            self._raise(exc, "head", key)
        except Exception as exc:
            self._raise(exc, "head", key)
        return ObjectInfo(
            key=key,
            size=resp["ContentLength"],
            sha256=_hex_digest(resp.get("ChecksumSHA256"), resp.get("ChecksumType")),
            encryption=(
                "SSE-C"
                if resp.get("SSECustomerAlgorithm") == "AES256"
                else resp.get("ServerSideEncryption")
            ),
            kms_key_id=resp.get("SSEKMSKeyId"),
            version_id=resp.get("VersionId"),
            content_type=resp.get("ContentType"),
            last_modified=_utc(resp.get("LastModified")),
            lock_mode=resp.get("ObjectLockMode"),
            retain_until=_utc(resp.get("ObjectLockRetainUntilDate")),
        )

    def get(self, key: str, *, version_id: str | None = None) -> bytes:
        """The bytes of ``key``; when S3 holds a checksum, botocore verifies them against it.
        :class:`ObjectNotFound` if S3 holds no such key or version."""
        try:
            resp = self._client.get_object(**self._read_request(key, version_id))
            body = resp["Body"]
            try:
                # read the StreamingBody itself: `with body as raw` yields the raw urllib3
                # stream, which skips the content-length and checksum verification
                return body.read()
            finally:
                body.close()
        except bex.ClientError as exc:
            if error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(
                    f"S3 get {self.bucket}/{key}: no such object ({error_code(exc)})", key=key
                ) from exc
            self._raise(exc, "get", key)
        except Exception as exc:
            self._raise(exc, "get", key)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every object under ``prefix``, in key order (size, key, last-modified only)."""
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        key=item["Key"],
                        size=item["Size"],
                        sha256=None,
                        encryption=None,
                        last_modified=_utc(item.get("LastModified")),
                    )
        except Exception as exc:
            self._raise(exc, "list", prefix)

    def list_versions(self, prefix: str) -> Iterator[ObjectVersion]:
        """Every version and delete marker under ``prefix`` (``ListObjectVersions``,
        paginated; needs ``s3:ListBucketVersions``), in key order; ``is_latest`` marks
        the entry S3 serves for the key."""
        pages = self._client.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        try:
            for page in pages:
                entries = [
                    ObjectVersion(
                        key=item["Key"],
                        version_id=item.get("VersionId"),
                        is_latest=bool(item.get("IsLatest")),
                        delete_marker=False,
                        size=item.get("Size", 0),
                        last_modified=_utc(item.get("LastModified")),
                    )
                    for item in page.get("Versions", [])
                ] + [
                    ObjectVersion(
                        key=item["Key"],
                        version_id=item.get("VersionId"),
                        is_latest=bool(item.get("IsLatest")),
                        delete_marker=True,
                        last_modified=_utc(item.get("LastModified")),
                    )
                    for item in page.get("DeleteMarkers", [])
                ]
                # a page holds versions and markers apart: merge them by key, newest first
                entries.sort(key=lambda v: (v.key, -(v.last_modified or _EPOCH).timestamp()))
                yield from entries
        except Exception as exc:
            self._raise(exc, "list_versions", prefix)

    def close(self) -> None:
        """Release the connection pools (botocore's, and the CRT client's if one was made)."""
        self._client.close()
        with self._putter_lock:
            putter, self._putter = self._putter, None
        if putter is not None:
            putter.close()

    def __enter__(self) -> S3Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals --------------------------------------------------------------------

    def _existing(self, key: str, data: bytes, sha256: str) -> PutResult | None:
        """After a refused conditional put: reuse the stored object, or raise a conflict."""
        info = self.head(key)
        if info is None:
            return None
        stored = info.sha256
        if stored is None:  # written by something that stored no (full-object) checksum
            stored = hashlib.sha256(self.get(key, version_id=info.version_id)).hexdigest()
        return reuse_existing(f"S3 put {self.bucket}/{key}", info, stored, sha256)

    def _raise(self, exc: Exception, operation: str, key: str) -> NoReturn:
        raise_store_error(exc, operation, self.bucket, key)


def raise_store_error(exc: Exception, operation: str, bucket: str, key: str) -> NoReturn:
    """Translate a botocore failure of ``operation`` on ``bucket``/``key`` into the
    StoreError tree (and raise it); see the module docstring."""
    where = f"S3 {operation} {bucket}/{key}"
    if isinstance(exc, bex.ClientError):
        code, status = error_code(exc), _status(exc)
        message = f"{where}: {code} (HTTP {status})"
        if code == "NoSuchBucket":
            raise StoreAccessDenied(
                f"{where}: bucket {bucket} does not exist (NoSuchBucket)", key=key
            ) from exc
        if code in _ACCESS_CODES or status == 403:
            raise StoreAccessDenied(message, key=key) from exc
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            raise StoreUnavailable(message, key=key) from exc
        raise StoreError(message, key=key) from exc
    name = type(exc).__name__
    if isinstance(exc, _CREDENTIAL_ERRORS):
        raise StoreAccessDenied(f"{where}: no usable credentials ({name})", key=key) from exc
    if isinstance(exc, PutTransportError):
        raise StoreUnavailable(f"{where}: {exc}", key=key) from exc
    if isinstance(exc, _TRANSPORT_ERRORS):
        raise StoreUnavailable(f"{where}: {name}", key=key) from exc
    if isinstance(exc, bex.BotoCoreError):
        raise StoreError(f"{where}: {name}", key=key) from exc
    raise exc


_PUT_HEADERS = {
    "ContentType": "Content-Type",
    "ChecksumSHA256": "x-amz-checksum-sha256",
    "ServerSideEncryption": "x-amz-server-side-encryption",
    "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id",
    "SSECustomerAlgorithm": "x-amz-server-side-encryption-customer-algorithm",
    "IfNoneMatch": "If-None-Match",
    "ObjectLockMode": "x-amz-object-lock-mode",
}


def _put_headers(request: PutObjectRequestTypeDef) -> list[tuple[str, str]]:
    """The HTTP headers botocore would send for these PutObject parameters."""
    params: dict[str, Any] = dict(request)
    headers = [(name, str(params[p])) for p, name in _PUT_HEADERS.items() if p in params]
    customer_key = params.get("SSECustomerKey")
    if customer_key is not None:
        digest = hashlib.md5(customer_key, usedforsecurity=False).digest()
        headers += [
            ("x-amz-server-side-encryption-customer-key", base64.b64encode(customer_key).decode()),
            ("x-amz-server-side-encryption-customer-key-MD5", base64.b64encode(digest).decode()),
        ]
    until = params.get("ObjectLockRetainUntilDate")
    if until is not None:
        headers.append(("x-amz-object-lock-retain-until-date", _iso8601(until)))
    return headers


def _iso8601(value: datetime) -> str:
    """botocore's form of a timestamp header (ISO 8601, UTC, microseconds if any)."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if value.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def error_code(exc: bex.ClientError) -> str:
    """The S3 error code of an answer, or its HTTP status when it has none (HEAD)."""
    return str(exc.response.get("Error", {}).get("Code", "")) or str(_status(exc))


def _status(exc: bex.ClientError) -> int:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return int(status or 0)
