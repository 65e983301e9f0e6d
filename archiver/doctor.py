"""``idpass-archiver doctor``: a preflight checklist before the first run.

Checks that the configuration loads, the API answers and accepts the token, the
signing key loads, the bucket exists with default encryption, versioning and Object
Lock are as the config asks, a scratch object round-trips with the configured
encryption (written, read, hashed, deleted), the clock agrees with the storage
server's and the API's, and which scheme each endpoint uses. Each check is one line:
``ok``, ``WARN`` (works, but look at it) or ``FAIL``; any failure makes the exit code
non-zero.

The API's clock is read from the ``Date`` header of the probe's answer (1 s
resolution, taken when the answer arrived). Retention windows, deadlines and the
"at risk" flag compare the API's timestamps with the local clock, so a skew shifts
them: above :data:`API_SKEW_WARN_SECONDS` (60 s) it is a warning, above
:data:`API_SKEW_FAIL_SECONDS` (1 h, the scale of ``pipeline.not_ready_recheck_seconds``
and of a run's cadence) a failure.

The round trip goes through the archive store; what only doctor asks of the bucket
(its settings, deleting the scratch object) goes through a
:class:`~archiver.store.bucket.BucketInspector`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

import httpx

from archiver.clock import Clock
from archiver.config import ApiSettings, Settings, is_loopback, warn_insecure_transport
from archiver.core.format import Layout
from archiver.errors import ApiAuthError, ApiError, ApiNotFound, ArchiverError, ConfigError
from archiver.idpass.client import DEFAULT_MAX_RESPONSE_BYTES, IdPassClient
from archiver.idpass.transport import Urllib3Transport
from archiver.store import ObjectStore
from archiver.store.bucket import BucketInspector

MAX_SKEW_SECONDS = 60.0
#: The API's clock (its Date header) this far from ours: a warning...
API_SKEW_WARN_SECONDS = 60.0
#: ...and this far: a failure.
API_SKEW_FAIL_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    warn: bool = False  # ok, but worth a look (printed as WARN)

    @property
    def label(self) -> str:
        return "FAIL" if not self.ok else "WARN" if self.warn else "ok"

    def to_json(self) -> dict[str, object]:
        return {"check": self.name, "ok": self.ok, "warn": self.warn, "detail": self.detail}


class _DateSeen(httpx.AsyncBaseTransport):
    """The API's transport, noting the ``Date`` header of each answer and when it came."""

    def __init__(self, inner: httpx.AsyncBaseTransport, clock: Clock) -> None:
        self._inner = inner
        self._clock = clock
        self.date: str | None = None
        self.seen_at: datetime | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        self.date, self.seen_at = response.headers.get("date"), self._clock.now()
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _api(settings: Settings, clock: Clock) -> list[Check]:
    try:
        api = settings.require_api()
    except ConfigError as exc:
        return [Check("api", False, str(exc))]
    if api.token is None:
        return [Check("api", False, "no token (IDPASS_ARCHIVER_API_TOKEN or api.token_file)")]
    seen = _DateSeen(_transport(api), clock)
    checks = [asyncio.run(_probe(api, seen))]
    if seen.seen_at is not None:  # the API answered something
        checks.append(_api_clock(seen.date, seen.seen_at))
    return checks


def _transport(api: ApiSettings) -> Urllib3Transport:
    """The transport a run would use (one connection is enough here)."""
    return Urllib3Transport(
        max_connections=1,
        connect_timeout=api.connect_timeout_seconds,
        read_timeout=api.read_timeout_seconds,
        deadline=api.request_deadline_seconds,
        max_response_bytes=api.max_response_bytes or DEFAULT_MAX_RESPONSE_BYTES,
        verify=api.verify_tls,
    )


async def _probe(api: ApiSettings, transport: httpx.AsyncBaseTransport) -> Check:
    token = api.token.get_secret_value() if api.token else ""
    async with IdPassClient(api.base_url, token, transport=transport) as client:
        try:
            # A random id: 404 proves the API is there and took the token.
            await client.details(str(uuid.uuid4()), images=False)
        except ApiNotFound:
            return Check("api", True, f"{api.base_url} answers and accepts the token")
        except ApiAuthError as exc:
            return Check("api", False, f"the token is refused ({exc})")
        except ApiError as exc:
            return Check("api", False, f"{exc.reason}: {exc}")
    return Check("api", True, f"{api.base_url} answers and accepts the token")


def _api_clock(date: str | None, seen_at: datetime) -> Check:
    """The skew between the API's ``Date`` header and our clock when it arrived."""
    try:
        server = parsedate_to_datetime(date) if date else None
    except (TypeError, ValueError):
        server = None
    if server is None or server.tzinfo is None:
        what = "an unreadable Date header" if date else "no Date header"
        return Check("api clock", True, f"the API sent {what}: skew unknown", warn=True)
    skew = (seen_at - server).total_seconds()
    limits = f"warn above ±{API_SKEW_WARN_SECONDS:.0f} s, fail above ±{API_SKEW_FAIL_SECONDS:.0f} s"
    return Check(
        "api clock",
        abs(skew) <= API_SKEW_FAIL_SECONDS,
        f"{skew:+.0f} s from the API's clock ({limits}; retention windows and deadlines "
        "compare its timestamps with ours)",
        warn=abs(skew) > API_SKEW_WARN_SECONDS,
    )


def _signing(settings: Settings) -> Check:
    from archiver.app import load_signer

    try:
        signer = load_signer(settings)
    except ConfigError as exc:
        return Check("signing key", False, str(exc))
    return Check("signing key", True, f"Ed25519, key id {signer.key_id}")


def run_doctor(
    settings: Settings,
    store: ObjectStore,
    clock: Clock,
    *,
    api_check: bool = True,
    bucket: BucketInspector | None = None,
) -> list[Check]:
    """The checklist. ``bucket`` defaults to an inspector of ``settings.storage`` with
    botocore's credential chain (as the CLI's store has), closed before returning."""
    with contextlib.ExitStack() as closing:
        if bucket is None:
            bucket = closing.enter_context(contextlib.closing(BucketInspector(settings.storage)))
        return _checks(settings, store, bucket, clock, api_check=api_check)


def _checks(
    settings: Settings,
    store: ObjectStore,
    bucket: BucketInspector,
    clock: Clock,
    *,
    api_check: bool,
) -> list[Check]:
    checks = [Check("config", True, f"loaded from {settings.source_path}")]
    warn_insecure_transport(settings)
    if settings.api is None or not api_check:
        checks.append(Check("api", settings.api is not None, "[api] section missing"))
    else:
        checks.extend(_api(settings, clock))
    checks.append(_signing(settings))
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("bucket", lambda: _bucket(settings, bucket, clock)),
        ("round trip", lambda: [_round_trip(settings, store, bucket)]),
    ]
    for name, step in steps:
        try:
            checks.extend(step())
        except ArchiverError as exc:
            checks.append(Check(name, False, f"{exc.reason}: {exc}"))
    if settings.api is not None:
        checks.append(_scheme("api", settings.api.base_url, settings.api.verify_tls))
    storage = settings.storage
    checks.append(_scheme("storage", storage.endpoint_url, storage.verify_tls))
    return checks


def _scheme(section: str, url: str | None, verify: bool) -> Check:
    """Which scheme the section's endpoint uses, and what that means for its secrets
    (``url`` None: the AWS endpoint, https). The config refuses plain http:// to a
    host that is not loopback unless ``allow_insecure_http`` is set."""
    name = f"{section} TLS"
    scheme = urlsplit(url).scheme.lower() if url else "https"
    if scheme != "https":
        if url is not None and is_loopback(url):
            return Check(name, True, f"{scheme}:// to loopback: no TLS, nothing leaves the host")
        return Check(
            name,
            True,
            f"{scheme}:// to a host that is not loopback: secrets travel in clear "
            f"({section}.allow_insecure_http = true)",
            warn=True,
        )
    if not verify:
        return Check(name, False, f"https://, but {section}.verify_tls = false")
    return Check(name, True, "https://, certificates verified")


def _bucket(settings: Settings, bucket: BucketInspector, clock: Clock) -> list[Check]:
    state = bucket.state()
    out = [Check("bucket", True, f"{settings.storage.bucket} exists and answers")]
    out.append(
        Check(
            "default encryption",
            state.default_encryption is not None,
            f"{state.default_encryption}"
            if state.default_encryption
            else "the bucket has no default encryption (every put sets it anyway; set a "
            "default as a second line of defence)",
        )
    )
    want_lock = settings.object_lock.mode
    if want_lock:
        ok = state.object_lock and state.versioning == "Enabled"
        detail = (
            f"Object Lock on, versioning {state.versioning}; objects get {want_lock} "
            f"for {settings.object_lock.retain_days} days"
            if ok
            else f"object_lock.mode = {want_lock} but the bucket has Object Lock "
            f"{'on' if state.object_lock else 'off'}, versioning {state.versioning or 'off'}"
        )
        out.append(Check("versioning and object lock", ok, detail))
    else:
        out.append(
            Check(
                "versioning and object lock",
                True,
                f"not required by the config (versioning {state.versioning or 'off'}, "
                f"Object Lock {'on' if state.object_lock else 'off'})",
            )
        )
    if state.server_time is not None:
        skew = (clock.now() - state.server_time).total_seconds()
        out.append(
            Check(
                "clock",
                abs(skew) <= MAX_SKEW_SECONDS,
                f"{skew:+.1f} s from the storage server's clock "
                f"(limit ±{MAX_SKEW_SECONDS:.0f} s; deadlines and leases depend on it)",
            )
        )
    else:
        out.append(Check("clock", False, "the storage server sent no Date header"))
    return out


def _round_trip(settings: Settings, store: ObjectStore, bucket: BucketInspector) -> Check:
    layout = Layout(settings.storage.clean_prefix)
    key = f"{layout.passes_root().removesuffix('passes/')}.doctor/{uuid.uuid4().hex}"
    data = os.urandom(1024)
    digest = hashlib.sha256(data).hexdigest()
    put = store.put(key, data, sha256=digest, content_type="application/octet-stream")
    try:
        info = store.head(key, version_id=put.version_id)
        back = store.get(key, version_id=put.version_id)
    finally:
        bucket.delete(key, version_id=put.version_id)
    if back != data:
        return Check("round trip", False, f"{key}: read back different bytes")
    if info is None or info.encryption != settings.storage.sse:
        got = info.encryption if info else None
        return Check("round trip", False, f"{key}: stored with encryption {got}")
    return Check(
        "round trip",
        True,
        f"wrote, read, hashed and deleted {key} ({settings.storage.sse}, SHA-256 checksum)",
    )
