"""Run the sandbox under uvicorn in a background thread, for tests, demos and benchmarks."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import httpx
import uvicorn

from archiver.sandbox.app import create_app
from archiver.sandbox.state import SandboxState

_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - a lookup, not a bind


class SandboxServer:
    """The sandbox API on a loopback port, served by uvicorn from a daemon thread.

    ``port=0`` lets the OS pick a free port; :attr:`base_url` tells which after
    :meth:`start`. Usable as a context manager::

        with SandboxServer("token") as sandbox:
            httpx.post(f"{sandbox.base_url}/idpass/details", ...)
    """

    def __init__(
        self,
        token: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        state: SandboxState | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        self.token = token
        self.host = host
        self.state = state if state is not None else SandboxState()
        self._requested_port = port
        self._startup_timeout = startup_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the sandbox server is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://host:port``; a wildcard bind is reached through loopback."""
        host = _LOOPBACK.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        """Start serving; return once the server answers HTTP."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        config = uvicorn.Config(
            create_app(self.state, token=self.token),
            host=self.host,
            port=self._requested_port,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            date_header=False,  # the app sends Date from the sandbox's clock
            timeout_graceful_shutdown=5,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, name="idpass-sandbox", daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox server did not start on {self.host}")
            time.sleep(0.01)
        self._port = int(server.servers[0].sockets[0].getsockname()[1])
        self._wait_until_answering(deadline)
        return self

    def _wait_until_answering(self, deadline: float) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.base_url, headers=headers, timeout=2.0) as client:
            while True:
                try:
                    client.get("/_sandbox/clock").raise_for_status()
                    return
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError("the sandbox server does not answer") from None
                    time.sleep(0.02)

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call more than once."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout=10)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout=5)
        self._server = self._thread = None
        self._port = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
