"""The project's exception tree.

Every error that crosses a module boundary is an :class:`ArchiverError`. Third-party
exceptions (httpx, botocore, SQLAlchemy) are translated where the I/O happens and
never escape the module that talks to that system. Messages never contain personal
data, cipher keys, tokens or response bodies: only ids, keys, statuses and reasons,
written from a fixed vocabulary; a value the ID Pass API chose (an error code, a
status, a slot name) enters one only through :func:`safe_token`.

    ArchiverError                 retryable  systemic
    ├── ConfigError                   no        yes   bad or missing configuration
    ├── AlreadyRunning                no        no    another run holds the catalog lock
    ├── ApiError                                      anything from the ID Pass API
    │   ├── ApiAuthError              no        yes   401 / 403: stop the run
    │   ├── ApiNotFound               no        no    404: unknown pass id
    │   ├── ApiBadRequest             no        no    400
    │   ├── ApiRateLimited            yes       no    429, carries retry_after
    │   ├── ApiServerError            yes       no    5xx
    │   ├── ApiTransportError         yes       no    timeout, reset, refused
    │   │   └── RequestDeadlineExceeded  yes  no  no whole answer within the deadline
    │   └── ApiMalformedResponse      yes       no    invalid JSON, truncated, wrong type
    │       ├── ResponseTooLarge      no        no    body over api.max_response_bytes
    │       └── UnrequestedContentEncoding  yes  no  compressed, though identity was asked
    ├── PayloadError                  no        no    a response we cannot archive
    │   ├── ImageDecodeError                          invalid Base64 / not a JPEG
    │   ├── DecryptionError                           wrong or missing cipher key
    │   ├── TooManySlots                              more image slots than allowed
    │   └── RecordTooLarge                            the record (no images) is too big
    ├── StoreError                                    anything from S3
    │   ├── StoreUnavailable          yes       yes*  endpoint down, 5xx, throttled
    │   ├── StoreAccessDenied         no        yes   credentials / policy
    │   ├── ObjectNotFound            no        no    no such key or version (a read)
    │   ├── ObjectConflict            no        no    key exists with other content
    │   │   └── PublicKeyConflict     no        yes   a foreign object at the key's copy
    │   └── EncryptionRefused         no        yes   a write would not be encrypted
    ├── CatalogError                  no        yes   the catalog database
    ├── FormatError                   no        no    stored bytes that are not a manifest
    │                                                 of a version this build reads
    ├── UntrustedManifest             no        no    a pass's stored manifest not taken as
    │                                                 its commit (unsigned, bad signature...)
    ├── SigningKeyError               no        no    a key unusable for Ed25519
    ├── SourceError                   yes**     no    a pass source (KYC database, export)
    ├── ExportError (export.py)       no        no    a pass that cannot be exported intact
    └── SeaweedFSError (sandbox/)     no        yes   the demo's local S3 test bed failed

    * a single failure is retried at pass level; the pipeline treats a run in which
      the store is unreachable for every pass as a systemic failure.
    ** retryable when the source may answer next time (down, timeout), not when its
      answer is unusable (the query lacks a column, a key is invalid). Never
      systemic: a source being down must not stop archiving what the catalog knows.

Outside the tree, on purpose: ``ValueError``/``TypeError`` for a caller breaking a
function's documented contract (a bug, which the CLI's last-resort handler reports as
an internal error), ``ValueError`` inside pydantic validators (the configuration turns
it into ConfigError), and private control-flow exceptions that never leave their
module. The sandbox's ``SandboxError`` is an HTTP answer of the simulator, never seen
by the archiver.
"""

from __future__ import annotations

import re

#: What :func:`safe_token` lets through: a short snake_case word.
_TOKEN = re.compile(r"[a-z0-9_]{1,32}")
#: What :func:`safe_token` says instead of anything else.
UNRECOGNISED = "unrecognised"


def safe_token(value: object) -> str:
    """``value`` when it is a short snake_case token, else ``"unrecognised"``.

    The one gate for text the ID Pass API controls (error codes, statuses, slot
    names, field locations) on its way into a message, reason, log line or manifest:
    whatever the API sends, what comes out is at most 32 characters of
    ``[a-z0-9_]``, so no personal data in prose, no terminal escape sequence, no
    newline can pass. Values are never shortened: a cut value is still API text.
    """
    if isinstance(value, str) and _TOKEN.fullmatch(value):
        return value
    return UNRECOGNISED


class ArchiverError(Exception):
    """Root of every error the archiver raises on purpose."""

    retryable: bool = False
    systemic: bool = False

    def __init__(self, message: str, *, pass_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pass_id = pass_id

    @property
    def reason(self) -> str:
        """A short machine-friendly reason code, e.g. ``api_server_error``."""
        name = type(self).__name__
        out = []
        for i, ch in enumerate(name):
            if ch.isupper() and i:
                out.append("_")
            out.append(ch.lower())
        return "".join(out)

    def __str__(self) -> str:
        return self.message


class ConfigError(ArchiverError):
    """The configuration is missing, unreadable or invalid."""

    systemic = True

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


class AlreadyRunning(ArchiverError):
    """Another run holds the SQLite catalog's lock; this run does nothing."""


# --- ID Pass API -------------------------------------------------------------------


class ApiError(ArchiverError):
    """An error talking to the ID Pass API."""

    def __init__(
        self, message: str, *, pass_id: str | None = None, status_code: int | None = None
    ) -> None:
        super().__init__(message, pass_id=pass_id)
        self.status_code = status_code


class ApiAuthError(ApiError):
    """The API refused our token (401/403). Systemic: every further call would fail too."""

    systemic = True


class ApiNotFound(ApiError):
    """The API does not know the pass id (404)."""


class ApiBadRequest(ApiError):
    """The API rejected the request as malformed (400)."""


class ApiRateLimited(ApiError):
    """The API asked us to slow down (429)."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        pass_id: str | None = None,
        status_code: int | None = 429,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, pass_id=pass_id, status_code=status_code)
        self.retry_after = retry_after


class ApiServerError(ApiError):
    """The API failed on its side (5xx)."""

    retryable = True


class ApiTransportError(ApiError):
    """The request did not complete: timeout, connection refused or reset."""

    retryable = True


class ApiMalformedResponse(ApiError):
    """The API answered with something that is not the documented JSON shape."""

    retryable = True


# The transport's bounds on one answer (archiver/idpass/transport.py). Their messages
# name the limit and our own setting, never a header value or anything else the API
# sent.


class ResponseTooLarge(ApiMalformedResponse):
    """The answer's body is over ``api.max_response_bytes``: refused before it is read
    when its ``Content-Length`` says so, else as soon as one byte more has arrived.
    Not retryable: the same pass gives the same answer again. If it is legitimate,
    raise the cap and re-run the pass (``run --pass ID``)."""

    retryable = False


class UnrequestedContentEncoding(ApiMalformedResponse):
    """A success answer with a ``Content-Encoding`` other than ``identity``, which the
    request asked for: refused unread (a gzip body of 1 MB can expand to 1 GiB).
    Retryable: it is a misconfiguration of the API or a proxy in front of it, which
    may be fixed by the next attempt."""


class RequestDeadlineExceeded(ApiTransportError):
    """The whole answer did not arrive within ``api.request_deadline_seconds`` (a
    server trickling bytes defeats the per-read timeout); the connection is cut and
    discarded. Retryable: a slow API or network may be faster next time."""


# --- payloads ---------------------------------------------------------------------


class PayloadError(ArchiverError):
    """A response that arrived intact but cannot be archived as it is."""

    def __init__(self, message: str, *, pass_id: str | None = None, slot: str | None = None):
        super().__init__(message, pass_id=pass_id)
        self.slot = slot


class ImageDecodeError(PayloadError):
    """An image is not valid Base64, or the bytes are not a complete JPEG."""


class DecryptionError(PayloadError):
    """An encrypted field could not be decrypted with the pass's cipher key."""


class TooManySlots(PayloadError):
    """A details answer names more image slots than the client accepts in one pass
    (:data:`archiver.idpass.models.MAX_SLOTS` by default): each slot would become
    an object, so the count is capped before anything is decoded or stored."""


class RecordTooLarge(PayloadError):
    """The record (a details answer without its images) is larger than the client
    accepts: it is archived whole, so an oversized extra field is refused instead."""


# --- object store -----------------------------------------------------------------


class StoreError(ArchiverError):
    """An error talking to the archive's object store."""

    def __init__(self, message: str, *, key: str | None = None, pass_id: str | None = None):
        super().__init__(message, pass_id=pass_id)
        self.key = key


class StoreUnavailable(StoreError):
    """The store did not answer, or answered with a server error or throttling."""

    retryable = True


class StoreAccessDenied(StoreError):
    """The store refused our credentials or the bucket policy denied the request."""

    systemic = True


class ObjectNotFound(StoreError):
    """The store answered, and it holds no object at that key (or no such version).

    Only this error says "not there": every other :class:`StoreError` means the store
    could not be asked (refused credentials, unreachable, a server error), which
    tells nothing about the object."""


class ObjectConflict(StoreError):
    """The key already holds an object whose content differs from ours."""

    def __init__(
        self,
        message: str,
        *,
        key: str,
        existing_sha256: str | None,
        new_sha256: str,
        pass_id: str | None = None,
    ) -> None:
        super().__init__(message, key=key, pass_id=pass_id)
        self.existing_sha256 = existing_sha256
        self.new_sha256 = new_sha256


class PublicKeyConflict(ObjectConflict):
    """The public key's copy in the bucket (``keys/<key id>.pub.pem``) holds other
    bytes than this signer's public key: someone else wrote there. Every run would
    meet it again, so it stops the run (exit 3) instead of failing it per pass."""

    systemic = True


class EncryptionRefused(StoreError):
    """A write would have been stored unencrypted; the archiver refuses."""

    systemic = True


# --- catalog ----------------------------------------------------------------------


class CatalogError(ArchiverError):
    """The catalog database failed or holds something we cannot read."""

    systemic = True


# --- archive format and keys ---------------------------------------------------------


class FormatError(ArchiverError):
    """Stored bytes that are not a manifest of a version this build understands:
    invalid JSON, an unknown version, or a document off its schema. Not retryable:
    reading the same bytes again gives the same answer."""


class UntrustedManifest(ArchiverError):
    """A pass's stored ``manifest.json`` that is not taken as its commit marker. Its
    ``problem`` is one of four tokens: no detached signature beside it
    (``unsigned``), one no trusted key made (``bad_signature``), signed bytes this
    build cannot read as a manifest (``invalid_manifest``), or a signed manifest of
    another pass (``wrong_pass_id``: copied under this pass's directory).

    Anyone who can write to the bucket can put an object there, so the pass is not
    archived on its word. Not retryable, and nothing is read or overwritten (Object
    Lock may hold the object anyway): a person compares it with the API and decides.
    The message names the problem and the key, never the object's content."""

    def __init__(self, problem: str, detail: str, *, key: str, pass_id: str | None = None):
        super().__init__(f"{problem}: {key} {detail}", pass_id=pass_id)
        self.problem = problem
        self.key = key


class SigningKeyError(ArchiverError):
    """A key that cannot be used for Ed25519 signing or verification."""


# --- sources ----------------------------------------------------------------------


class SourceError(ArchiverError):
    """A pass source (the customer's KYC database, an export file) failed.

    Carries the source's name; never its URL, row values or cipher keys.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        source: str,
        pass_id: str | None = None,
        retryable: bool = True,
    ) -> None:
        super().__init__(f"source {source}: {message}", pass_id=pass_id)
        self.source = source
        self.retryable = retryable


def where(exc: BaseException) -> str:
    """file:line of the innermost frame: enough to find a bug, with no values in it."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return "unknown"
    return f"{tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}"
