"""The sandbox's HTTP surface: the public ID Pass routes and the ``/_sandbox/`` admin routes.

Every route needs ``Authorization: Bearer <token>``; every error is
``{"error": {"code": "<snake_case>", "message": "<text>"}}`` and no message
contains personal data.

Public (all ``POST``, JSON): ``/idpass/register``, ``/idpass/details``,
``/idpass/cancel``. Admin: ``POST /_sandbox/passes``,
``POST /_sandbox/passes/{id}/complete``, ``POST /_sandbox/passes/{id}/status``,
``GET /_sandbox/passes/{id}/images/{slot}``, ``GET|POST /_sandbox/clock``,
``GET /_sandbox/ledger`` (NDJSON), ``GET /_sandbox/pii``, ``POST /_sandbox/reset``,
``GET|POST /_sandbox/options`` (the wire form served, see
:class:`~archiver.sandbox.state.WireOptions`),
``GET|POST|DELETE /_sandbox/faults`` (counted faults, see
:class:`~archiver.sandbox.state.Fault`) and ``GET|POST|DELETE /_sandbox/fault-rates``
(random faults drawn with seeded probabilities, see
:class:`~archiver.sandbox.state.FaultRates`; ``GET`` also counts what was injected).
A counted fault that matches a call is used first; otherwise the call draws from the
rates. Every answer carries a ``Date`` header from the sandbox's clock (a
``clock_skew`` answer: from the skewed clock).
"""

from __future__ import annotations

import hmac
import logging
import random
import uuid
from datetime import datetime, timedelta
from typing import Any

import anyio
import orjson
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from archiver.sandbox import cipher, spoil, validate
from archiver.sandbox import images as sandbox_images
from archiver.sandbox.details import build_details
from archiver.sandbox.state import (
    DEFAULT_SKEW_DAYS,
    IMAGE_KINDS,
    Fault,
    PassRecord,
    SandboxError,
    SandboxState,
    SettableClock,
    WireOptions,
)
from archiver.sandbox.wire import SLOTS, http_date, timestamp

JSON = "application/json"
NDJSON = "application/x-ndjson"
_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}


def json_response(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


class DroppedConnection(Exception):
    """Raised by :class:`DroppingResponse` after part of the body went out: the server
    (uvicorn) then closes the connection, so the client reads a short body."""


class _HtmlError(Exception):
    """An injected ``html_error``: answered with a gateway's HTML 502 page."""


class _QuietDrops(logging.Filter):
    """Keep uvicorn from logging a traceback for every injected dropped connection."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DroppedConnection)


_QUIET_DROPS = _QuietDrops()


class DroppingResponse(Response):
    """Headers announcing the whole body (``Content-Length``), then only the first
    ``keep`` bytes of it, then the connection is closed: a connection dropped mid-body."""

    def __init__(self, body: bytes, *, status_code: int, media_type: str, keep: int) -> None:
        super().__init__(body, status_code=status_code, media_type=media_type)
        self.keep = max(0, min(keep, len(body) - 1))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send(
            {"type": "http.response.body", "body": bytes(self.body[: self.keep]), "more_body": True}
        )
        raise DroppedConnection("connection dropped mid-body (injected fault)")


HTML_ERROR_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
    b"<body><h1>502 Bad Gateway</h1><p>The upstream server is not answering.</p>"
    b"<hr><address>sandbox-gateway</address></body></html>\n"
)


class BearerAuth:
    """Pure ASGI middleware: a request without the right bearer token gets a 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            given = b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    given = value
                    break
            scheme, _, credentials = given.partition(b" ")
            if not hmac.compare_digest(scheme.lower() + b" " + credentials, self._expected):
                response = error_response(
                    401,
                    "unauthorized",
                    "missing or invalid bearer token",
                    {"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class DateHeader:
    """Pure ASGI middleware: every answer carries ``Date`` from the sandbox's clock,
    unless the route set its own (a ``clock_skew`` answer)."""

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    headers.append((b"date", http_date(self.state.now()).encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, dated)


def _admin_view(record: PassRecord) -> dict[str, Any]:
    return {
        **record.ledger_entry(),
        "verification_status": record.verification_status,
        "slots": list(record.slots),
    }


def _answer_clock(state: SandboxState, fault: Fault | None) -> datetime:
    """The clock this answer is judged by: the sandbox's, or ``days`` ahead of it."""
    now = state.now()
    if fault is not None and fault.kind == "clock_skew":
        now += timedelta(days=fault.days if fault.days is not None else DEFAULT_SKEW_DAYS)
    return now


def _details_body(
    record: PassRecord,
    now: datetime,
    flags: dict[str, bool],
    encrypt: bool,
    fault: Fault | None,
    options: WireOptions,
) -> tuple[bytes, int]:
    """The details answer, and where a ``cut_body`` cuts it (in its first image)."""
    kind = fault.kind if fault is not None and fault.kind in IMAGE_KINDS else None
    doc = build_details(
        record, now, corrupt_image=kind == "corrupt_image", missing=options.missing_slots, **flags
    )
    if kind == "not_jpeg":
        spoil.spoil_image(doc, kind)
    elif kind == "empty_images":
        spoil.empty_images(doc)
    elif kind == "null_slot" and fault is not None:
        spoil.null_slots(doc, random.Random(fault.seed or 0), fault.slots)
    if encrypt:
        doc = cipher.encrypt_answer(doc, record.cipher_key)
    if kind in ("invalid_base64", "truncated_base64"):
        spoil.spoil_image(doc, kind)
    spoil.reshape_images(doc, options.image_form)
    body = orjson.dumps(doc)
    return body, spoil.mid_image(body, doc)


class _Endpoints:
    def __init__(self, state: SandboxState) -> None:
        self.state = state

    # --- faults ----------------------------------------------------------------

    async def _fault(self, request: Request, pass_id: str | None) -> Fault | None:
        """Take the injected fault for this call (a counted one, else a random draw):
        raise it, sleep it, or hand it back to be applied to the response."""
        path = request.url.path
        fault = self.state.take_fault(path, pass_id) or self.state.draw_fault(path)
        if fault is None:
            return None
        if fault.kind == "delay":
            await anyio.sleep(fault.seconds or 0)
            return None
        if fault.kind == "status":
            status = fault.status or 503
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            code = "rate_limited" if status == 429 else "injected_fault"
            raise SandboxError(status, code, "injected by the sandbox", headers)
        if fault.kind == "html_error":
            raise _HtmlError()
        if fault.kind == "error_envelope":
            raise SandboxError(200, "internal", "an internal error occurred")
        return fault

    @staticmethod
    def _finish(response: Response, fault: Fault | None) -> Response:
        """Apply a fault that spoils the response itself (image faults are applied
        while the details document is built)."""
        if fault is None or fault.kind in IMAGE_KINDS:
            return response
        body = bytes(response.body)
        if fault.kind == "truncated":
            return Response(body[: len(body) // 2], media_type=JSON)
        if fault.kind == "drop":
            return DroppingResponse(
                body, status_code=response.status_code, media_type=JSON, keep=len(body) // 2
            )
        if fault.kind == "wrong_content_type":
            return Response(body, media_type="text/plain; charset=utf-8")
        if fault.kind == "invalid_json":
            # what a server that writes NaN into its JSON would send
            return Response(b'{"error_rate": NaN, ' + body[1:], media_type=JSON)
        return response

    # --- public routes ---------------------------------------------------------

    async def register(self, request: Request) -> Response:
        body = validate.read_object(await request.body())
        config = validate.parse_register(body)
        fault = await self._fault(request, None)
        record = self.state.register(config)
        base = f"{request.url.scheme}://{request.url.netloc}"
        doc = {
            "id": record.id,
            "cipher_key": record.cipher_key,
            "link": f"{base}/flow/{record.id}",
            "api_reference": record.api_reference,
        }
        return self._finish(json_response(doc), fault)

    async def details(self, request: Request) -> Response:
        body = validate.read_object(await request.body())
        pass_id = validate.pass_id(body.get("id"))
        cipher_key = body.get("cipher_key")
        if cipher_key is not None and not isinstance(cipher_key, str):
            raise validate.bad("cipher_key", "must be a string")
        flags = {
            name: validate.opt_bool(body, name, False)
            for name in ("return_logs", "return_images", "return_documents")
        }
        fault = await self._fault(request, pass_id)
        record = self.state.get(pass_id)
        if cipher_key is not None and not hmac.compare_digest(
            cipher_key.encode(), record.cipher_key.encode()
        ):
            raise SandboxError(400, "cipher_key_mismatch", "cipher_key does not match this pass")
        now = _answer_clock(self.state, fault)
        payload, mid_image = await run_in_threadpool(
            _details_body, record, now, flags, cipher_key is None, fault, self.state.options
        )
        if fault is not None and fault.kind == "cut_body":
            return DroppingResponse(payload, status_code=200, media_type=JSON, keep=mid_image)
        response = Response(payload, media_type=JSON)
        if fault is not None and fault.kind == "clock_skew":
            response.headers["Date"] = http_date(now)
        return self._finish(response, fault)

    async def cancel(self, request: Request) -> Response:
        body = validate.read_object(await request.body())
        pass_id = validate.pass_id(body.get("id"))
        fault = await self._fault(request, pass_id)
        self.state.cancel(pass_id)
        doc = {"status": "cancelled", "fee_refunded": True, "api_reference": str(uuid.uuid4())}
        return self._finish(json_response(doc), fault)

    # --- admin routes ----------------------------------------------------------

    async def create_passes(self, request: Request) -> Response:
        body = validate.read_object(await request.body(), allow_empty=True)
        kwargs: dict[str, Any] = {
            "status": validate.opt_status(body) or "complete",
            "image_retention_days": validate.opt_int(body, "image_retention_days", 30, 0, 5000),
            "link_validity_days": validate.opt_int(body, "link_validity_days", 7, 1, 14),
            "completed_at": validate.opt_datetime(body, "completed_at"),
            "created_at": validate.opt_datetime(body, "created_at"),
            "verification_status": validate.opt_verification(body),
            "slots": validate.opt_slots(body),
            "count": validate.opt_int(body, "count", 1, 1, validate.MAX_COUNT),
        }
        records = await run_in_threadpool(lambda: self.state.create(**kwargs))
        return json_response({"passes": [r.ledger_entry() for r in records]}, 201)

    async def complete_pass(self, request: Request) -> Response:
        pass_id = validate.pass_id(request.path_params["pass_id"])
        body = validate.read_object(await request.body(), allow_empty=True)
        record = self.state.complete(
            pass_id,
            completed_at=validate.opt_datetime(body, "completed_at"),
            verification_status=validate.opt_verification(body),
            slots=validate.opt_slots(body),
        )
        return json_response(_admin_view(record))

    async def set_status(self, request: Request) -> Response:
        pass_id = validate.pass_id(request.path_params["pass_id"])
        body = validate.read_object(await request.body())
        status = validate.opt_status(body)
        if status is None:
            raise validate.bad("status", "is required")
        return json_response(_admin_view(self.state.set_status(pass_id, status)))

    async def image(self, request: Request) -> Response:
        pass_id = validate.pass_id(request.path_params["pass_id"])
        slot = request.path_params["slot"]
        record = self.state.get(pass_id)
        if slot not in SLOTS or slot not in record.slots:
            raise SandboxError(404, "image_not_found", "this pass has no image in this slot")
        jpeg = await run_in_threadpool(sandbox_images.image_for, record.id, slot)
        return Response(jpeg, media_type="image/jpeg")

    async def clock(self, request: Request) -> Response:
        clock = self.state.clock
        if request.method == "POST":
            body = validate.read_object(await request.body())
            advance = validate.opt_number(body, "advance_seconds", -1e10, 1e10)
            when = validate.opt_datetime(body, "set")
            if (advance is None) == (when is None):
                raise validate.bad("clock", "give exactly one of advance_seconds or set")
            if not isinstance(clock, SettableClock):
                raise SandboxError(409, "clock_not_settable", "the sandbox clock cannot be moved")
            if advance is not None:
                clock.advance(timedelta(seconds=advance))
            elif when is not None:
                clock.set(when)
        return json_response({"now": timestamp(clock.now())})

    async def options(self, request: Request) -> Response:
        if request.method == "POST":
            body = validate.read_object(await request.body())
            self.state.options = validate.parse_options(body, self.state.options)
        return json_response(self.state.options.as_dict())

    async def ledger(self, request: Request) -> Response:
        lines = [orjson.dumps(r.ledger_entry()) + b"\n" for r in self.state.passes()]
        return Response(b"".join(lines), media_type=NDJSON)

    async def pii(self, request: Request) -> Response:
        return json_response({"strings": self.state.pii_strings()})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return json_response({"reset": True})

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            body = validate.read_object(await request.body())
            self.state.add_fault(validate.parse_fault(body))
        elif request.method == "DELETE":
            self.state.clear_faults()
        return json_response({"faults": [f.as_dict() for f in self.state.faults()]})

    async def fault_rates(self, request: Request) -> Response:
        if request.method == "POST":
            body = validate.read_object(await request.body())
            self.state.set_fault_rates(validate.parse_fault_rates(body))
        elif request.method == "DELETE":
            self.state.set_fault_rates(None)
        return json_response(self.state.fault_rates())


async def _on_sandbox_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SandboxError)
    return error_response(exc.status, exc.code, exc.message, exc.headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _on_html_error(request: Request, exc: Exception) -> Response:
    return Response(HTML_ERROR_PAGE, status_code=502, media_type="text/html; charset=utf-8")


async def _on_crash(request: Request, exc: Exception) -> Response:
    return error_response(500, "internal_error", "the sandbox failed")


def create_app(state: SandboxState, *, token: str) -> Starlette:
    """The sandbox ASGI app over ``state``, accepting only ``Bearer <token>``."""
    if not token:
        raise ValueError("the sandbox needs a non-empty token")
    ep = _Endpoints(state)
    routes = [
        Route("/idpass/register", ep.register, methods=["POST"]),
        Route("/idpass/details", ep.details, methods=["POST"]),
        Route("/idpass/cancel", ep.cancel, methods=["POST"]),
        Route("/_sandbox/passes", ep.create_passes, methods=["POST"]),
        Route("/_sandbox/passes/{pass_id}/complete", ep.complete_pass, methods=["POST"]),
        Route("/_sandbox/passes/{pass_id}/status", ep.set_status, methods=["POST"]),
        Route("/_sandbox/passes/{pass_id}/images/{slot}", ep.image, methods=["GET"]),
        Route("/_sandbox/clock", ep.clock, methods=["GET", "POST"]),
        Route("/_sandbox/options", ep.options, methods=["GET", "POST"]),
        Route("/_sandbox/ledger", ep.ledger, methods=["GET"]),
        Route("/_sandbox/pii", ep.pii, methods=["GET"]),
        Route("/_sandbox/reset", ep.reset, methods=["POST"]),
        Route("/_sandbox/faults", ep.faults, methods=["GET", "POST", "DELETE"]),
        Route("/_sandbox/fault-rates", ep.fault_rates, methods=["GET", "POST", "DELETE"]),
    ]
    logging.getLogger("uvicorn.error").addFilter(_QUIET_DROPS)
    return Starlette(
        routes=routes,
        middleware=[Middleware(DateHeader, state=state), Middleware(BearerAuth, token=token)],
        exception_handlers={
            SandboxError: _on_sandbox_error,
            _HtmlError: _on_html_error,
            HTTPException: _on_http_error,
            Exception: _on_crash,
        },
    )


__all__ = [
    "BearerAuth",
    "DateHeader",
    "DroppedConnection",
    "DroppingResponse",
    "create_app",
    "error_response",
]
