"""An httpx transport that moves the bytes with urllib3, in threads.

The archiver speaks to the ID Pass API through :class:`httpx.AsyncClient` (its API, its
timeouts, and ``httpx.MockTransport`` in tests), but a details response is several MB
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
"""

from __future__ import annotations

import asyncio
import ssl
from concurrent.futures import ThreadPoolExecutor

import httpx
import urllib3
from urllib3 import exceptions as u3


class Urllib3Transport(httpx.AsyncBaseTransport):
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._send, request, body)

    def _send(self, request: httpx.Request, body: bytes) -> httpx.Response:
        try:
            response = self._pool.request(
                request.method,
                str(request.url),
                body=body or None,
                headers=dict(request.headers),
                redirect=False,
                preload_content=True,
                decode_content=True,
            )
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
        headers = list(response.headers.iteritems())
        if "content-encoding" in response.headers:  # urllib3 decoded the body already
            drop = {"content-encoding", "content-length"}
            headers = [(k, v) for k, v in headers if k.lower() not in drop]
        return httpx.Response(
            response.status,
            headers=headers,
            content=response.data,
            request=request,
        )

    async def aclose(self) -> None:
        self._pool.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


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
