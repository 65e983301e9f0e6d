"""Async client for the ID Pass API: the only code that speaks HTTP to GlobalData.

Every httpx exception is translated here into the :mod:`archiver.errors` tree.
Messages are written from a fixed vocabulary: what the API controls (its error
code, a status, a slot name, a field location) enters one only through
:func:`archiver.errors.safe_token`; the response body, its message, its content
type and its header values never do, since any of them may echo personal data or
carry terminal escape sequences into a log, the catalog or a locked manifest.
The wire shapes accepted are the guesses of :mod:`archiver.idpass.models`.
"""

from __future__ import annotations

import dataclasses
import email.utils
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec
import orjson
import structlog
from pydantic import ValidationError

from archiver.clock import Clock, SystemClock
from archiver.config import PipelineSettings, default_max_response_bytes
from archiver.core.images import Base64Text, valid_slot_name
from archiver.errors import (
    ApiAuthError,
    ApiBadRequest,
    ApiError,
    ApiMalformedResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiServerError,
    ApiTransportError,
    ImageDecodeError,
    RecordTooLarge,
    TooManySlots,
    safe_token,
)
from archiver.idpass import crypto
from archiver.idpass.models import (
    ENVELOPE_FIELD,
    ERROR_CODE_STATUS,
    IMAGE_LIST_KEYS,
    IMAGES_FIELD,
    MAX_RECORD_BYTES,
    MAX_SLOTS,
    PassDetails,
    error_code,
    error_envelope_code,
    is_envelope,
    strip_data_uri,
    unwrap,
)
from archiver.idpass.transport import BODY_SLOT, BodySlot, Urllib3Transport

#: The default cap on a response body: api.max_response_bytes's default.
DEFAULT_MAX_RESPONSE_BYTES = default_max_response_bytes(PipelineSettings().max_image_bytes)

USER_AGENT = "idpass-archiver"
DETAILS = "/idpass/details"
#: |API clock - our clock| above which ``api_clock_skew`` is logged as a warning.
CLOCK_SKEW_WARN_SECONDS = 300.0

log = structlog.get_logger("archiver.idpass")


@dataclass(frozen=True, slots=True)
class PassRead:
    """One details read: the typed view, the record to archive, and the raw image strings.

    ``record`` is the response without images (its text fields decrypted when
    decryption was local). ``images`` maps slot → Base64 JPEG (ASCII bytes, usually a
    view into the response body, or a str when the JSON string had escapes such as
    ``\\/``; a data URI prefix removed), or an encrypted token
    (:func:`archiver.idpass.crypto.decrypt_value` opens it to JPEG bytes) when
    ``encrypted``,
    with absent and null slots left out; ``images_field_present`` tells whether the
    response had an ``images`` object at all. Every slot name, in ``images`` and in
    ``null_slots``, passed :func:`archiver.core.images.valid_slot_name`.
    ``server_date`` is the answer's ``Date`` header (None when missing or garbled).
    """

    details: PassDetails
    record: dict[str, Any] = field(repr=False)
    images: dict[str, Base64Text] = field(repr=False)
    images_field_present: bool
    null_slots: tuple[str, ...]
    encrypted: bool
    response_bytes: int
    server_date: datetime | None = None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: let the caller use its own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_code(response: httpx.Response) -> str:
    """The API's machine error code as a safe token, if the body is JSON with one
    (never the message)."""
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "non_json_body"
    code = error_code(doc)
    return "unspecified" if code is None else safe_token(code)


def _error_type(status: int) -> type[ApiError]:
    """The error class of an HTTP error status (429 aside: it carries Retry-After)."""
    if status in (401, 403):
        return ApiAuthError
    if status == 404:
        return ApiNotFound
    if status >= 500:
        return ApiServerError
    if status in (400, 409, 422):
        return ApiBadRequest
    return ApiMalformedResponse


def _api_error(
    message: str,
    status: int,
    *,
    pass_id: str | None,
    status_code: int,
    retry_after: float | None = None,
) -> ApiError:
    """The error for an answer meaning HTTP ``status`` (``status_code`` is the one sent)."""
    if status == 429:
        return ApiRateLimited(
            message, pass_id=pass_id, status_code=status_code, retry_after=retry_after
        )
    return _error_type(status)(message, pass_id=pass_id, status_code=status_code)


def server_date(response: httpx.Response) -> datetime | None:
    """The ``Date`` header as an aware datetime; None when missing or garbled."""
    value = response.headers.get("date")
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class IdPassClient:
    """``async with IdPassClient(base_url, token) as api: await api.details(pass_id)``."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        request_deadline: float = 120.0,
        max_response_bytes: int | None = None,
        max_connections: int = 16,
        verify_tls: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        max_slots: int = MAX_SLOTS,
        max_record_bytes: int = MAX_RECORD_BYTES,
        clock: Clock | None = None,
        clock_skew_warn_seconds: float = CLOCK_SKEW_WARN_SECONDS,
    ) -> None:
        """The timeouts, the deadline, the size cap, the connection limit and TLS
        verification are the transport's
        (:class:`~archiver.idpass.transport.Urllib3Transport`), and only its: httpx
        ignores its own ``limits`` and ``verify`` when it is given a transport, and
        passes its ``timeout`` to a transport that does not read it. ``transport``
        replaces the urllib3 one, and with it these settings (tests give an
        ``httpx.MockTransport``). ``max_response_bytes`` defaults to
        :data:`DEFAULT_MAX_RESPONSE_BYTES`. ``max_slots`` and ``max_record_bytes`` bound one
        details answer (see :mod:`archiver.idpass.models`); ``clock`` is what the
        answers' ``Date`` headers are compared with (:attr:`clock_skew`)."""
        if transport is None:
            transport = Urllib3Transport(
                max_connections=max_connections,
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                deadline=request_deadline,
                max_response_bytes=max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES,
                verify=verify_tls,
            )
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={
                "Authorization": f"Bearer {token}",
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
                "Accept-Encoding": "identity",  # the transport refuses any other
                "Content-Type": "application/json",
            },
            # No timeout of httpx's: its default (5 s) would travel with every request
            # to the transport, which applies its own and never reads this one.
            timeout=None,  # noqa: S113 - the transport's timeouts apply
            transport=transport,
        )
        self._max_slots = max_slots
        self._max_record_bytes = max_record_bytes
        self._clock = clock or SystemClock()
        self._skew_warn = clock_skew_warn_seconds
        self._skew: float | None = None
        self._skew_logged = False
        self._skew_warned = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def clock_skew(self) -> float | None:
        """Seconds the API's clock is ahead of ours (negative: behind), from the
        ``Date`` header of the last details answer that had a readable one; None
        before any. The header has whole seconds: read it to about a second."""
        return self._skew

    def _measure_skew(self, when: datetime | None, received: datetime) -> None:
        """Record the skew; log ``api_clock_skew`` once per client, and once more, as
        a warning, the first time it exceeds the threshold."""
        if when is None:
            return
        skew = (when - received).total_seconds()
        self._skew = skew
        fields = {"skew_seconds": round(skew, 1), "threshold_seconds": self._skew_warn}
        if not self._skew_logged:
            self._skew_logged = True
            log.info("api_clock_skew", **fields)
        if abs(skew) > self._skew_warn and not self._skew_warned:
            self._skew_warned = True
            log.warning("api_clock_skew", **fields)

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        pass_id: str | None,
        body_slot: BodySlot | None = None,
    ) -> tuple[httpx.Response, datetime | None]:
        """POST ``body``: the answer and its ``Date``, the clock skew measured from
        every answer (an error one too: ``doctor``'s probe is answered 404); an HTTP
        error status raises its :class:`ApiError`."""
        extensions = {BODY_SLOT: body_slot} if body_slot is not None else None
        try:
            response = await self._http.post(
                path, content=orjson.dumps(body), extensions=extensions
            )
        except httpx.TimeoutException as exc:
            raise ApiTransportError(
                f"{path}: timed out ({type(exc).__name__})", pass_id=pass_id
            ) from None
        except httpx.TransportError as exc:
            raise ApiTransportError(
                f"{path}: transport failure ({type(exc).__name__})", pass_id=pass_id
            ) from None
        when = server_date(response)
        self._measure_skew(when, self._clock.now())
        status = response.status_code
        if status >= 400:
            raise _api_error(
                f"{path}: HTTP {status} ({_error_code(response)})",
                status,
                pass_id=pass_id,
                status_code=status,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        return response, when

    def _json_body(self, path: str, response: httpx.Response, pass_id: str | None) -> Any:
        """The JSON document of a 2xx answer, its ``{"data": …}`` envelope removed."""
        status = response.status_code
        if "json" not in response.headers.get("content-type", "").lower():
            # never the header's value: the API wrote it
            raise ApiMalformedResponse(
                f"{path}: expected JSON, got another content type",
                pass_id=pass_id,
                status_code=status,
            )
        content = response.content
        # httpx keeps a Response and its stream in a reference cycle: without this, each
        # multi-MB body would live until the cyclic garbage collector runs.
        response.stream = httpx.ByteStream(b"")
        try:
            return unwrap(load_json(content, max_record_bytes=self._max_record_bytes))
        except (orjson.JSONDecodeError, msgspec.DecodeError):
            raise ApiMalformedResponse(
                f"{path}: body is not valid JSON ({len(content)} bytes)",
                pass_id=pass_id,
                status_code=status,
            ) from None
        except RecordTooLarge as exc:
            raise RecordTooLarge(f"{path}: {exc.message}", pass_id=pass_id) from None

    async def details(
        self,
        pass_id: str,
        cipher_key: str | None = None,
        *,
        images: bool = True,
        documents: bool = False,
        logs: bool = False,
        decrypt_locally_with: str | None = None,
        body_slot: BodySlot | None = None,
    ) -> PassRead:
        """Read a pass. With ``decrypt_locally_with``, the key never leaves this process.
        With ``body_slot``, the transport takes it before it reads the response body."""
        body: dict[str, Any] = {
            "id": pass_id,
            "return_images": images,
            "return_documents": documents,
            "return_logs": logs,
        }
        if cipher_key is not None:
            body["cipher_key"] = cipher_key
        response, when = await self._post(DETAILS, body, pass_id, body_slot)
        size = len(response.content)
        doc = self._json_body(DETAILS, response, pass_id)
        read = parse_details(
            doc, pass_id, decrypt_locally_with=decrypt_locally_with, max_slots=self._max_slots
        )
        return dataclasses.replace(read, response_bytes=size, server_date=when)


_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])
_OBJECTS = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])


class _RecordSize:
    """The raw JSON bytes of record fields seen so far, against a limit."""

    __slots__ = ("limit", "seen")

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.seen = 0

    def add(self, fields: dict[str, msgspec.Raw], skip: frozenset[str]) -> None:
        self.seen += sum(len(n) + len(raw) for n, raw in fields.items() if n not in skip)
        if self.limit is not None and self.seen > self.limit:
            raise RecordTooLarge(f"record (the answer without images) exceeds {self.limit} bytes")


def load_json(content: bytes, *, max_record_bytes: int | None = None) -> Any:
    """Decode a response body, leaving each image's Base64 undecoded, in the body.

    A details body is mostly Base64 strings. Decoding them as JSON strings (``str``
    objects, checked as UTF-8) took 7 ms for a 7 MB body; here the body is split into
    its top-level fields without decoding them (msgspec.Raw: a scan, about 1 ms), the
    small fields are decoded with orjson, and each image string is handed on as a
    zero-copy ``memoryview`` of the body's bytes, to be Base64-decoded straight from
    there (copying them out cost 3 ms a pass, more than the scans). A body with a
    backslash anywhere (a JSON escape) is handled slot by slot: an image string with
    escapes (``\\/``, which some encoders write for ``/``) is decoded as JSON, the
    others are copied out as bytes. Bodies that are not JSON objects decode as usual
    (the caller reports them). With ``max_record_bytes``, a body whose fields other
    than images (their raw JSON bytes and names) add up to more raises
    :class:`RecordTooLarge` before any of them is decoded.
    """
    try:
        top = _OBJECT.decode(content)
    except msgspec.DecodeError:
        return orjson.loads(content)  # not an object, or not JSON: orjson says which
    return _fields(top, escapes=content.find(b"\\") >= 0, size=_RecordSize(max_record_bytes))


def _fields(top: dict[str, msgspec.Raw], *, escapes: bool, size: _RecordSize) -> dict[str, Any]:
    raw_data = top.get(ENVELOPE_FIELD)
    inner = _OBJECT.decode(raw_data) if raw_data is not None and _starts(raw_data, b"{") else None
    # an envelope (see models.unwrap) holds the pass, images included
    enveloped = inner is not None and is_envelope(top, inner)
    size.add(top, frozenset({IMAGES_FIELD, ENVELOPE_FIELD} if enveloped else {IMAGES_FIELD}))
    out: dict[str, Any] = {}
    for name, raw in top.items():
        if name == IMAGES_FIELD:
            out[name] = _image_strings(raw, escapes=escapes)
        elif name == ENVELOPE_FIELD and enveloped and inner is not None:
            out[name] = _fields(inner, escapes=escapes, size=size)
        else:
            out[name] = _json(raw)
    return out


def _image_strings(raw: msgspec.Raw, *, escapes: bool) -> Any:
    """The images field: an object of slots, or a list of ``{slot, data}`` objects
    (models.IMAGE_LIST_KEYS), each Base64 string left in the body."""
    if _starts(raw, b"{"):
        return {slot: _image_value(v, escapes) for slot, v in _OBJECT.decode(raw).items()}
    if _starts(raw, b"["):
        try:
            entries = _OBJECTS.decode(raw)
        except msgspec.DecodeError:
            return _json(raw)  # entries that are not objects: parse_details reports
        data = IMAGE_LIST_KEYS[1]
        return [
            {k: _image_value(v, escapes) if k == data else _json(v) for k, v in e.items()}
            for e in entries
        ]
    return _json(raw)  # null, or a wrong type parse_details reports


def _image_value(value: msgspec.Raw, escapes: bool) -> Any:
    if not _starts(value, b'"'):
        return _json(value)  # null or not a string: judged later
    text = memoryview(value)[1:-1]
    if not escapes:
        return text
    copied = bytes(text)
    return copied if copied.find(b"\\") < 0 else _json(value)


def _starts(raw: msgspec.Raw, first: bytes) -> bool:
    return bytes(memoryview(raw)[:1]) == first


def _json(raw: msgspec.Raw) -> Any:
    return orjson.loads(memoryview(raw))


def _validation_summary(exc: ValidationError) -> str:
    """Which fields failed, without their values (they may be personal), each part of
    a location a safe token (a location can hold a key the API chose)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(safe_token(str(p)) for p in err["loc"])
        parts.append(f"{loc}: {safe_token(err['type'])}")
    return "; ".join(parts)


def _malformed(message: str, pass_id: str) -> ApiMalformedResponse:
    return ApiMalformedResponse(f"{DETAILS}: {message}", pass_id=pass_id)


def _error_envelope(code: str, pass_id: str) -> ApiError:
    """An HTTP 200 ``{"error": …}`` answer, classed by its code (models.ERROR_CODE_STATUS;
    an unknown code is a server error, retried)."""
    token = safe_token(code) if code else "unspecified"
    return _api_error(
        f"{DETAILS}: HTTP 200 with an error envelope ({token})",
        ERROR_CODE_STATUS.get(code, 500),
        pass_id=pass_id,
        status_code=200,
    )


def _slot_map(raw: Any, pass_id: str) -> Any:
    """``images`` as an object: a list of ``{slot, data}`` entries becomes one."""
    if not isinstance(raw, list):
        return raw
    slot_key, data_key = IMAGE_LIST_KEYS
    out: dict[str, Any] = {}
    for n, entry in enumerate(raw):
        slot = entry.get(slot_key) if isinstance(entry, dict) else None
        if not isinstance(slot, str) or data_key not in entry:
            raise _malformed(f"images entry {n} is not a {{slot, data}} object", pass_id)
        if slot in out:
            raise _malformed(f"images lists slot {safe_token(slot)} twice", pass_id)
        out[slot] = entry[data_key]
    return out


def _images(raw: Any, pass_id: str, max_slots: int) -> tuple[dict[str, Base64Text], list[str]]:
    """The image strings (a data URI prefix removed) and the null slots, checked: at
    most ``max_slots`` slots, every name a safe key segment."""
    if raw is None:
        return {}, []
    if isinstance(raw, list | dict) and len(raw) > max_slots:
        raise TooManySlots(
            f"{DETAILS}: {len(raw)} image slots, more than the {max_slots} accepted",
            pass_id=pass_id,
        )
    slots = _slot_map(raw, pass_id)
    if not isinstance(slots, dict):
        raise _malformed(f"images is a {type(slots).__name__}, not an object", pass_id)
    images: dict[str, Base64Text] = {}
    null_slots: list[str] = []
    for slot, value in slots.items():
        if not valid_slot_name(slot):
            raise ImageDecodeError("image slot name is not a safe key segment", pass_id=pass_id)
        if value is None:
            null_slots.append(slot)
        elif isinstance(value, bytes | str | memoryview):
            images[slot] = strip_data_uri(value)
        else:
            raise _malformed(f"image slot {safe_token(slot)} is a {type(value).__name__}", pass_id)
    return images, null_slots


def parse_details(
    doc: Any,
    pass_id: str,
    *,
    decrypt_locally_with: str | None = None,
    max_slots: int = MAX_SLOTS,
) -> PassRead:
    """Turn a decoded details document into a :class:`PassRead` (pure; no I/O)."""
    if not isinstance(doc, dict):
        raise _malformed(f"expected an object, got {type(doc).__name__}", pass_id)
    code = error_envelope_code(doc)
    if code is not None:
        raise _error_envelope(code, pass_id)
    encrypted = crypto.is_encrypted(doc)
    record = {k: v for k, v in doc.items() if k != IMAGES_FIELD}
    if encrypted and decrypt_locally_with is not None:
        record = crypto.decrypt_response(record, decrypt_locally_with, images=False)
        record.pop(crypto.MARKER_FIELD, None)  # the record itself is now plaintext
    try:
        details = PassDetails.model_validate(record)
    except ValidationError as exc:
        raise _malformed(
            f"response does not match the expected shape ({_validation_summary(exc)})",
            pass_id,
        ) from None
    if details.id != pass_id:
        raise _malformed("response is for a different pass id", pass_id)
    raw_images = doc.get(IMAGES_FIELD)
    images, null_slots = _images(raw_images, pass_id, max_slots)
    return PassRead(
        details=details,
        record=record,
        images=images,
        images_field_present=raw_images is not None,
        null_slots=tuple(null_slots),
        encrypted=encrypted,
        response_bytes=0,
    )
