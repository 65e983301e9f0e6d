"""An httpx transport that moves the bytes with urllib3, in threads.

The archiver speaks to the ID Pass API through :class:`httpx.AsyncClient` (its API, and
``httpx.MockTransport`` in tests), but a details response is several MB
of JSON, and httpx's own transport reads a body 64 KiB at a time, each chunk passing
through anyio's timeout and cancellation machinery under the GIL. Measured on the
benchmark's 50 responses (364 MB, concurrency 6, loopback, same machine and run):

==============================  ======  ========
client                          wall s  CPU s
==============================  ======  ========
httpx.AsyncClient (default)       0.43    0.42
httpx.Client in 6 threads         0.32    0.43
urllib3 in 6 threads              0.07    0.07
==============================  ======  ========

urllib3 (already installed: botocore uses it) reads a body with ``Content-Length`` in
one ``recv_into`` loop in C, with the GIL released. So this transport hands each request
to a ``urllib3.PoolManager`` on a small thread pool of its own and returns the whole
body to httpx. Errors are raised as the httpx exceptions httpx's own transport would
raise, so :mod:`archiver.idpass.client` maps them unchanged. No retries and no
redirects here: retrying is :mod:`archiver.retry`'s job.

A details request spends most of its time waiting for the API's answer, and that
wait holds no memory; the body does. When the request carries a :class:`BodySlot`
in its ``extensions`` under :data:`BODY_SLOT`, the transport reads the response headers,
waits for the slot, and only then reads the body (meanwhile the kernel's socket
buffers and TCP flow control hold the rest). So more requests can be in flight than
bodies held: the pipeline sends ``api.concurrency`` requests and holds at most
``pipeline.concurrency`` bodies, which hides API latency without more memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import httpx
import urllib3
from urllib3 import exceptions as u3


class BodySlot:
    """One task's claim on a shared bound of response bodies held in memory.

    Acquired at most once however often it is asked for (retries of a request keep
    the claim); released by whoever owns the task once the body is no longer needed,
    and by the transport when a response turns out to be an error answer or its body
    cannot be read (the caller may back off for a long time; it holds no body then).
    """

    __slots__ = ("_slots", "held")

    def __init__(self, slots: asyncio.Semaphore) -> None:
        self._slots = slots
        self.held = False

    async def acquire(self) -> None:
        if not self.held:
            await self._slots.acquire()
            self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._slots.release()


#: The httpx request extension that carries a request's :class:`BodySlot`.
BODY_SLOT = "archiver.body_slot"


class Urllib3Transport(httpx.AsyncBaseTransport):
    """The one place where the connect and read timeouts, the number of connections
    and TLS verification apply: the :class:`httpx.AsyncClient` around it is given no
    timeout, limits or verify of its own (with a transport, httpx ignores them)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        verify: bool | ssl.SSLContext = True,
    ) -> None:
        if isinstance(verify, ssl.SSLContext):
            context = verify
        else:
            context = ssl.create_default_context()
            if not verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=max_connections,
            block=True,  # at most max_connections sockets per host, as httpx's limits
            ssl_context=context,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix="idpass-http"
        )
        self._max_connections = max_connections
        # connection permits, made in the event loop that first uses them (_permits)
        self._permit_loop: asyncio.AbstractEventLoop | None = None
        self._permit_sem: asyncio.Semaphore | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        slot = request.extensions.get(BODY_SLOT)
        if not isinstance(slot, BodySlot):
            slot = None
        loop = asyncio.get_running_loop()
        # A connection is taken here, before a thread is: a thread never waits for a
        # connection that is held by a response waiting for its body slot.
        permits = self._permits(loop)
        await permits.acquire()
        started: Future[urllib3.BaseHTTPResponse] = self._executor.submit(
            self._start, request, body, slot is None
        )
        try:
            response = await asyncio.wrap_future(started)
        except asyncio.CancelledError:
            # The thread goes on: discard what it brings back, then free the connection.
            def orphaned(done: Future[urllib3.BaseHTTPResponse]) -> None:
                if not done.cancelled() and done.exception() is None:
                    _discard(done.result())
                with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                    loop.call_soon_threadsafe(permits.release)

            started.add_done_callback(orphaned)
            raise
        except BaseException:
            permits.release()
            raise
        try:
            if slot is None:  # the body was read with the headers
                return self._finish(request, response)
            try:
                await slot.acquire()
            except BaseException:  # cancelled while waiting: the body will never be read
                _discard(response)
                raise
            try:
                answer = await loop.run_in_executor(self._executor, self._finish, request, response)
            except BaseException:
                slot.release()
                raise
            if answer.status_code >= 400:
                slot.release()  # an error answer: nothing to hold while the caller backs off
            return answer
        finally:
            permits.release()

    def _permits(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        """The connection permits for ``loop`` (a transport used from a later event
        loop, as tests do, gets its own)."""
        if self._permit_sem is None or self._permit_loop is not loop:
            self._permit_loop = loop
            self._permit_sem = asyncio.Semaphore(self._max_connections)
        return self._permit_sem

    def _start(
        self, request: httpx.Request, body: bytes, preload: bool
    ) -> urllib3.BaseHTTPResponse:
        """The response, its body read too with ``preload`` (else only its headers)."""
        with _as_httpx_errors(request):
            return self._pool.request(
                request.method,
                str(request.url),
                body=body or None,
                headers=dict(request.headers),
                redirect=False,
                preload_content=preload,
                decode_content=True,
            )

    def _finish(self, request: httpx.Request, response: urllib3.BaseHTTPResponse) -> httpx.Response:
        """Read the body (if not read yet) and give the connection back to the pool."""
        try:
            with _as_httpx_errors(request):
                data = response.data
        finally:
            response.release_conn()
        headers = list(response.headers.iteritems())
        if "content-encoding" in response.headers:  # urllib3 decoded the body already
            drop = {"content-encoding", "content-length"}
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
        return httpx.Response(
            response.status,
            headers=headers,
            content=data,
            request=request,
        )

    async def aclose(self) -> None:
        self._pool.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    """urllib3's exceptions as the httpx ones httpx's own transport would raise."""
    try:
        yield
    except u3.NewConnectionError as exc:  # a subclass of ConnectTimeoutError: first
        raise httpx.ConnectError(_what(exc), request=request) from None
    except u3.ConnectTimeoutError as exc:
        raise httpx.ConnectTimeout(_what(exc), request=request) from None
    except (u3.ReadTimeoutError, TimeoutError) as exc:
        raise httpx.ReadTimeout(_what(exc), request=request) from None
    except u3.MaxRetryError as exc:  # retries=False still wraps connection failures
        raise _from_reason(exc.reason, request) from None
    except (u3.ProtocolError, u3.DecodeError, u3.IncompleteRead) as exc:
        raise httpx.RemoteProtocolError(_what(exc), request=request) from None
    except (u3.HTTPError, OSError) as exc:
        raise httpx.ReadError(_what(exc), request=request) from None


def _discard(response: urllib3.BaseHTTPResponse) -> None:
    """A response whose body will not be read: close its connection (unread bytes
    must not be left on a keep-alive connection) and give it back to the pool."""
    response.close()
    response.release_conn()


def _from_reason(reason: Exception | None, request: httpx.Request) -> httpx.TransportError:
    if isinstance(reason, u3.NewConnectionError | ConnectionError):
        return httpx.ConnectError(_what(reason), request=request)
    if isinstance(reason, u3.ConnectTimeoutError):
        return httpx.ConnectTimeout(_what(reason), request=request)
    if isinstance(reason, u3.ReadTimeoutError):
        return httpx.ReadTimeout(_what(reason), request=request)
    return httpx.ReadError(_what(reason), request=request)


def _what(exc: BaseException | None) -> str:
    """The exception's type only: urllib3 messages carry the URL (with the pass id)."""
    return type(exc).__name__ if exc is not None else "unknown"
