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

Every answer is bounded, so that no single one can hurt the job:

* **size**: a body over ``max_response_bytes`` is refused with
  :class:`~archiver.errors.ResponseTooLarge`: before it is read when its
  ``Content-Length`` says so (such a body is still read in one ``recv_into`` loop),
  else (chunked or close-delimited) it is read 1 MiB at a time and refused at the
  first byte over the cap;
* **encoding**: requests say ``Accept-Encoding: identity`` and bodies are never
  decoded; a success answer with another ``Content-Encoding`` is refused unread
  (:class:`~archiver.errors.UnrequestedContentEncoding`). An error answer so encoded
  (or over 64 KiB) is handed on with an empty body: its status alone classifies it;
* **time**: a request has ``deadline`` seconds in all to bring its headers and its
  body (the read timeout applies to each ``recv``: a server trickling a byte at a time
  defeats it). Waiting for a connection permit or a body slot is not counted: that is
  our own queue. One watchdog thread shuts the socket down when a deadline passes,
  which ends the blocked read; the connection is closed, never reused, and the
  request fails with :class:`~archiver.errors.RequestDeadlineExceeded`.

These three are raised as the archiver's errors directly (they are not transport
failures httpx knows), without a pass id: the pipeline records them against the pass
it was reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import io
import itertools
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
import urllib3
from urllib3 import exceptions as u3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from archiver.errors import RequestDeadlineExceeded, ResponseTooLarge, UnrequestedContentEncoding

#: A body without ``Content-Length`` is read this much at a time (each read one C loop).
READ_CHUNK = 1024 * 1024
#: The most of an error answer's body that is read (the client wants its error code).
ERROR_BODY_BYTES = 64 * 1024


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
    """The one place where the connect and read timeouts, the request deadline, the
    response size cap, the number of connections and TLS verification apply: the
    :class:`httpx.AsyncClient` around it is given no timeout, limits or verify of its
    own (with a transport, httpx ignores them)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout: float,
        read_timeout: float,
        deadline: float,
        max_response_bytes: int,
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
        # connections that the watchdog can find (see _watch)
        self._pool.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
        self._executor = ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix="idpass-http"
        )
        self._max_connections = max_connections
        self._deadline = deadline
        self._max_response_bytes = max_response_bytes
        self._watchdog = _Watchdog()
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
        deadline = _Deadline(self._deadline, self._watchdog)
        started: Future[urllib3.BaseHTTPResponse] = self._executor.submit(
            self._start, request, body, deadline
        )
        try:
            response = await asyncio.wrap_future(started)
        except asyncio.CancelledError:
            # The thread goes on (its deadline still runs): discard what it brings
            # back, then free the connection.
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
            return await self._body(loop, request, response, deadline, slot)
        finally:
            permits.release()

    async def _body(
        self,
        loop: asyncio.AbstractEventLoop,
        request: httpx.Request,
        response: urllib3.BaseHTTPResponse,
        deadline: _Deadline,
        slot: BodySlot | None,
    ) -> httpx.Response:
        """Read the body of ``response`` (taking ``slot`` first, when there is one)."""
        if slot is not None:
            try:
                await slot.acquire()
            except BaseException:  # cancelled while waiting: the body will never be read
                _discard(response)
                raise
        try:
            answer = await loop.run_in_executor(
                self._executor, self._finish, request, response, deadline
            )
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        if slot is not None and answer.status_code >= 400:
            slot.release()  # an error answer: nothing to hold while the caller backs off
        return answer

    def _permits(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        """The connection permits for ``loop`` (a transport used from a later event
        loop, as tests do, gets its own)."""
        if self._permit_sem is None or self._permit_loop is not loop:
            self._permit_loop = loop
            self._permit_sem = asyncio.Semaphore(self._max_connections)
        return self._permit_sem

    def _start(
        self, request: httpx.Request, body: bytes, deadline: _Deadline
    ) -> urllib3.BaseHTTPResponse:
        """Send the request and read the response's headers (not its body)."""
        headers = {k: v for k, v in request.headers.items() if k.lower() != "accept-encoding"}
        headers["Accept-Encoding"] = "identity"
        response: urllib3.BaseHTTPResponse | None = None
        _current.deadline = deadline
        try:
            with deadline.running(request), _as_httpx_errors(request):
                response = self._pool.request(
                    request.method,
                    str(request.url),
                    body=body or None,
                    headers=headers,
                    redirect=False,
                    preload_content=False,
                    decode_content=False,
                )
        except RequestDeadlineExceeded:
            if response is not None:  # the headers came, then the time ran out
                _discard(response)
            raise
        finally:
            _current.deadline = None
        return response

    def _finish(
        self, request: httpx.Request, response: urllib3.BaseHTTPResponse, deadline: _Deadline
    ) -> httpx.Response:
        """Read the body, bounded, and give the connection back to the pool (closed, if
        the body was not read to its end)."""
        try:
            with deadline.running(request), _as_httpx_errors(request):
                data, whole = self._read(request, response)
        except BaseException:
            _discard(response)
            raise
        if whole:
            response.release_conn()
        else:
            _discard(response)
        headers = [
            (k, v)
            for k, v in response.headers.iteritems()
            if whole or k.lower() not in {"content-encoding", "content-length"}
        ]
        return httpx.Response(response.status, headers=headers, content=data, request=request)

    def _read(
        self, request: httpx.Request, response: urllib3.BaseHTTPResponse
    ) -> tuple[bytes, bool]:
        """The body, and whether it was read to its end. A success answer is refused
        when it is encoded or over the cap; an error answer's body is dropped then."""
        path = request.url.path
        encoded = not _identity(response.headers.get("content-encoding"))
        if response.status >= 400:
            data = None if encoded else _read_capped(response, ERROR_BODY_BYTES)
            return (b"", False) if data is None else (data, True)
        if encoded:
            raise UnrequestedContentEncoding(
                f"{path}: the answer has a Content-Encoding other than identity, which "
                "the request asked for (refused unread)"
            )
        data = _read_capped(response, self._max_response_bytes)
        if data is None:
            raise ResponseTooLarge(
                f"{path}: the answer's body is over api.max_response_bytes "
                f"({self._max_response_bytes} bytes)"
            )
        return data, True

    async def aclose(self) -> None:
        self._pool.clear()
        self._watchdog.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _identity(encoding: str | None) -> bool:
    """Whether a ``Content-Encoding`` header value (or its absence) means no coding."""
    if encoding is None:
        return True
    return all(t.strip().lower() in {"", "identity"} for t in encoding.split(","))


def _read_capped(response: urllib3.BaseHTTPResponse, cap: int) -> bytes | None:
    """The whole body, or ``None`` if it is over ``cap`` bytes (then it is left unread,
    or read to ``cap + 1`` bytes when no ``Content-Length`` told its size)."""
    length = response.length_remaining
    if length is not None:
        # one recv_into loop in C, the GIL released (see the benchmark above)
        return response.read() if length <= cap else None
    out = io.BytesIO()
    while out.tell() <= cap:
        chunk = response.read(min(READ_CHUNK, cap + 1 - out.tell()))
        if not chunk:
            return out.getvalue()
        out.write(chunk)
    return None


# --- the request deadline ------------------------------------------------------------


class _Deadline:
    """One request's time budget, and the connection to cut when it runs out.

    ``running`` brackets each stretch of network waiting (sending and reading the
    headers; reading the body): time between the stretches is not spent. The budget
    passes in the watchdog's thread, which calls :meth:`expire`; a connection the
    request takes after that (or while it connects) is cut by :meth:`watch`.
    """

    __slots__ = ("_conn", "_left", "_lock", "_round", "_since", "_watchdog", "expired", "seconds")

    def __init__(self, seconds: float, watchdog: _Watchdog) -> None:
        self.seconds = seconds
        self.expired = False
        self._left = seconds
        self._since: float | None = None
        self._round = 0
        self._conn: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._watchdog = watchdog

    @contextlib.contextmanager
    def running(self, request: httpx.Request) -> Iterator[None]:
        """The block's time counts against the budget; once it has run out, whatever
        the block raised or returned becomes :class:`RequestDeadlineExceeded`."""
        self._arm()
        try:
            yield
        except Exception:
            if self._disarm():
                raise self._error(request) from None
            raise
        if self._disarm():
            raise self._error(request)

    def _error(self, request: httpx.Request) -> RequestDeadlineExceeded:
        return RequestDeadlineExceeded(
            f"{request.url.path}: no whole answer within api.request_deadline_seconds "
            f"({self.seconds:g} s); the connection was cut"
        )

    def _arm(self) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
            self._round += 1
            when, round_ = self._since + self._left, self._round
        self._watchdog.schedule(when, self, round_)

    def _disarm(self) -> bool:
        """Stop the clock; whether the budget had run out."""
        with self._lock:
            if self._since is not None:
                self._left -= time.monotonic() - self._since
                self._since = None
            return self.expired

    def watch(self, conn: HTTPConnection) -> None:
        """``conn`` carries this request (cut at once if the budget has run out)."""
        with self._lock:
            self._conn = conn
            if self.expired:
                _cut(conn)

    def expire(self, round_: int) -> None:
        """The watchdog's call: the budget of stretch ``round_`` has run out."""
        with self._lock:
            if round_ != self._round or self._since is None:
                return  # that stretch ended in time
            self.expired = True
            self._since = None
            if self._conn is not None:
                _cut(self._conn)


class _Watchdog:
    """One thread that expires deadlines when they pass (started with the first)."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, _Deadline, int]] = []
        self._wake = threading.Condition()
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, when: float, deadline: _Deadline, round_: int) -> None:
        with self._wake:
            heapq.heappush(self._due, (when, next(self._order), deadline, round_))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="idpass-deadline", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._closed:
                    return
                now = time.monotonic()
                due = []
                while self._due and self._due[0][0] <= now:
                    due.append(heapq.heappop(self._due))
                if not due:
                    self._wake.wait(self._due[0][0] - now if self._due else None)
                    continue
            for _, _, deadline, round_ in due:  # outside the lock: expire takes its own
                deadline.expire(round_)

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._due.clear()
            self._wake.notify()


def _cut(conn: HTTPConnection) -> None:
    """End any read blocked on ``conn``'s socket (it returns EOF or fails). The plain
    socket's shutdown, also for TLS: ``SSLSocket.shutdown`` would drop its SSL object
    under the thread reading through it."""
    sock = conn.sock
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


#: The deadline of the request the current worker thread is sending (see _watch).
_current = threading.local()


def _watch(conn: HTTPConnection) -> None:
    deadline: _Deadline | None = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.watch(conn)


class _Watched:
    """A connection that tells the request's deadline it carries it: on each request
    (a reused connection) and once connected (a new one: its socket exists now)."""

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _watch(self)  # type: ignore[arg-type]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _watch(self)  # type: ignore[arg-type]
        super().request(*args, **kwargs)  # type: ignore[misc]


class _HTTPWatched(_Watched, HTTPConnection):
    pass


class _HTTPSWatched(_Watched, HTTPSConnection):
    """:class:`_HTTPWatched` for TLS."""


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPWatched


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSWatched


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
