"""Async client for the ID Pass API: the only code that speaks HTTP to GlobalData.

Every httpx exception is translated here into the :mod:`archiver.errors` tree.
Error messages carry the HTTP status and the API's error *code* at most: never the
response body, which may echo personal data.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import httpx
import msgspec
import orjson
from pydantic import ValidationError

from archiver.config import PipelineSettings, default_max_response_bytes
from archiver.core.images import Base64Text
from archiver.errors import (
    ApiAuthError,
    ApiBadRequest,
    ApiError,
    ApiMalformedResponse,
    ApiNotFound,
    ApiRateLimited,
    ApiServerError,
    ApiTransportError,
)
from archiver.idpass import crypto
from archiver.idpass.models import (
    ENVELOPE_FIELD,
    IMAGES_FIELD,
    PassDetails,
    is_envelope,
    unwrap,
)
from archiver.idpass.transport import BODY_SLOT, BodySlot, Urllib3Transport

#: The default cap on a response body: api.max_response_bytes's default.
DEFAULT_MAX_RESPONSE_BYTES = default_max_response_bytes(PipelineSettings().max_image_bytes)

USER_AGENT = "idpass-archiver"


@dataclass(frozen=True, slots=True)
class PassRead:
    """One details read: the typed view, the record to archive, and the raw image strings.

    ``record`` is the response without images (its text fields decrypted when
    decryption was local). ``images`` maps slot → Base64 JPEG (ASCII bytes, usually a
    view into the response body, or a str when the JSON string had escapes such as
    ``\\/``), or an encrypted token
    (:func:`archiver.idpass.crypto.decrypt_value` opens it to JPEG bytes) when
    ``encrypted``,
    with absent and null slots left out; ``images_field_present`` tells whether the
    response had an ``images`` object at all.
    """

    details: PassDetails
    record: dict[str, Any] = field(repr=False)
    images: dict[str, Base64Text] = field(repr=False)
    images_field_present: bool
    null_slots: tuple[str, ...]
    encrypted: bool
    response_bytes: int


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # HTTP-date form: let the caller use its own backoff
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _error_code(response: httpx.Response) -> str:
    """The API's machine error code, if the body is JSON with one (never the message)."""
    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return "non_json_body"
    if isinstance(doc, dict):
        err = doc.get("error")
        code = err.get("code") if isinstance(err, dict) else None
        if isinstance(code, str):
            return code[:64]
    return "unspecified"


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
    ) -> None:
        """The timeouts, the deadline, the size cap, the connection limit and TLS
        verification are the transport's
        (:class:`~archiver.idpass.transport.Urllib3Transport`), and only its: httpx
        ignores its own ``limits`` and ``verify`` when it is given a transport, and
        passes its ``timeout`` to a transport that does not read it. ``transport``
        replaces the urllib3 one, and with it these settings (tests give an
        ``httpx.MockTransport``). ``max_response_bytes`` defaults to
        :data:`DEFAULT_MAX_RESPONSE_BYTES`."""
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

    async def _post_sized(
        self,
        path: str,
        body: dict[str, Any],
        pass_id: str | None,
        body_slot: BodySlot | None = None,
    ) -> tuple[Any, int]:
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
        status = response.status_code
        if status >= 400:
            code = _error_code(response)
            msg = f"{path}: HTTP {status} ({code})"
            exc_type: type[ApiError]
            if status in (401, 403):
                exc_type = ApiAuthError
            elif status == 404:
                exc_type = ApiNotFound
            elif status == 429:
                raise ApiRateLimited(
                    msg,
                    pass_id=pass_id,
                    retry_after=_retry_after(response.headers.get("Retry-After")),
                )
            elif status >= 500:
                exc_type = ApiServerError
            elif status in (400, 409, 422):
                exc_type = ApiBadRequest
            else:
                exc_type = ApiMalformedResponse
            raise exc_type(msg, pass_id=pass_id, status_code=status)
        ctype = response.headers.get("content-type", "")
        if "json" not in ctype.lower():
            raise ApiMalformedResponse(
                f"{path}: expected JSON, got content-type {ctype[:40]!r}",
                pass_id=pass_id,
                status_code=status,
            )
        content = response.content
        # httpx keeps a Response and its stream in a reference cycle: without this, each
        # multi-MB body would live until the cyclic garbage collector runs.
        response.stream = httpx.ByteStream(b"")
        try:
            return unwrap(load_json(content)), len(content)
        except (orjson.JSONDecodeError, msgspec.DecodeError):
            raise ApiMalformedResponse(
                f"{path}: body is not valid JSON ({len(content)} bytes)",
                pass_id=pass_id,
                status_code=status,
            ) from None

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
        doc, size = await self._post_sized("/idpass/details", body, pass_id, body_slot)
        read = parse_details(doc, pass_id, decrypt_locally_with=decrypt_locally_with)
        return dataclasses.replace(read, response_bytes=size)


_OBJECT = msgspec.json.Decoder(dict[str, msgspec.Raw])


def load_json(content: bytes) -> Any:
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
    (the caller reports them).
    """
    try:
        top = _OBJECT.decode(content)
    except msgspec.DecodeError:
        return orjson.loads(content)  # not an object, or not JSON: orjson says which
    return _fields(top, escapes=content.find(b"\\") >= 0)


def _fields(top: dict[str, msgspec.Raw], *, escapes: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, raw in top.items():
        if name == IMAGES_FIELD:
            out[name] = _image_strings(raw, escapes=escapes)
        elif name == ENVELOPE_FIELD and _starts(raw, b"{"):
            inner = _OBJECT.decode(raw)
            # an envelope (see models.unwrap) holds the pass, images included
            out[name] = _fields(inner, escapes=escapes) if is_envelope(top, inner) else _json(raw)
        else:
            out[name] = _json(raw)
    return out


def _image_strings(raw: msgspec.Raw, *, escapes: bool) -> Any:
    if not _starts(raw, b"{"):
        return _json(raw)  # null, or a wrong type parse_details reports
    slots: dict[str, Any] = {}
    for slot, value in _OBJECT.decode(raw).items():
        if not _starts(value, b'"'):
            slots[slot] = _json(value)  # null or not a string: judged later
            continue
        text = memoryview(value)[1:-1]
        if escapes:
            copied = bytes(text)
            slots[slot] = copied if copied.find(b"\\") < 0 else _json(value)
        else:
            slots[slot] = text
    return slots


def _starts(raw: msgspec.Raw, first: bytes) -> bool:
    return bytes(memoryview(raw)[:1]) == first


def _json(raw: msgspec.Raw) -> Any:
    return orjson.loads(memoryview(raw))


def _validation_summary(exc: ValidationError) -> str:
    """Which fields failed, without their values (they may be personal)."""
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['type']}")
    return "; ".join(parts)


def parse_details(doc: Any, pass_id: str, *, decrypt_locally_with: str | None = None) -> PassRead:
    """Turn a decoded details document into a :class:`PassRead` (pure; no I/O)."""
    if not isinstance(doc, dict):
        raise ApiMalformedResponse(
            f"/idpass/details: expected an object, got {type(doc).__name__}", pass_id=pass_id
        )
    encrypted = crypto.is_encrypted(doc)
    if encrypted and decrypt_locally_with is not None:
        doc = crypto.decrypt_response(doc, decrypt_locally_with, images=False)
    raw_images = doc.get(IMAGES_FIELD)
    drop = {IMAGES_FIELD}
    if encrypted and decrypt_locally_with is not None:
        drop.add(crypto.MARKER_FIELD)  # the record itself is now plaintext
    record = {k: v for k, v in doc.items() if k not in drop}
    try:
        details = PassDetails.model_validate(record)
    except ValidationError as exc:
        raise ApiMalformedResponse(
            f"/idpass/details: response does not match the expected shape "
            f"({_validation_summary(exc)})",
            pass_id=pass_id,
        ) from None
    if details.id != pass_id:
        raise ApiMalformedResponse(
            "/idpass/details: response is for a different pass id", pass_id=pass_id
        )
    images: dict[str, Base64Text] = {}
    null_slots: list[str] = []
    if raw_images is not None and not isinstance(raw_images, dict):
        raise ApiMalformedResponse(
            f"/idpass/details: images is a {type(raw_images).__name__}, not an object",
            pass_id=pass_id,
        )
    for slot, value in (raw_images or {}).items():
        if value is None:
            null_slots.append(slot)
        elif isinstance(value, bytes | str | memoryview):
            images[slot] = value
        else:
            raise ApiMalformedResponse(
                f"/idpass/details: image slot {slot[:40]!r} is a {type(value).__name__}",
                pass_id=pass_id,
            )
    return PassRead(
        details=details,
        record=record,
        images=images,
        images_field_present=raw_images is not None,
        null_slots=tuple(null_slots),
        encrypted=encrypted,
        response_bytes=0,
    )
