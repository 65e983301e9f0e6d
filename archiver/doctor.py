"""``idpass-archiver doctor``: a preflight checklist before the first run.

Checks that the configuration loads, the API answers and accepts the token, the
signing key loads, the bucket exists with default encryption, versioning and Object
Lock are as the config asks, a scratch object round-trips with the configured
encryption (written, read, hashed, deleted), and the clock agrees with the storage
server's. Each check is one line; any failure makes the exit code non-zero.

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

from archiver.clock import Clock
from archiver.config import Settings
from archiver.core.format import Layout
from archiver.errors import ApiAuthError, ApiError, ApiNotFound, ArchiverError, ConfigError
from archiver.idpass.client import IdPassClient
from archiver.store import ObjectStore
from archiver.store.bucket import BucketInspector

MAX_SKEW_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, object]:
        return {"check": self.name, "ok": self.ok, "detail": self.detail}


def _api(settings: Settings) -> Check:
    try:
        api = settings.require_api()
    except ConfigError as exc:
        return Check("api", False, str(exc))
    if api.token is None:
        return Check("api", False, "no token (IDPASS_ARCHIVER_API_TOKEN or api.token_file)")

    async def probe() -> Check:
        async with IdPassClient(
            api.base_url,
            api.token.get_secret_value() if api.token else "",
            connect_timeout=api.connect_timeout_seconds,
            read_timeout=api.read_timeout_seconds,
            request_deadline=api.request_deadline_seconds,
            max_response_bytes=api.max_response_bytes,
            verify_tls=api.verify_tls,
        ) as client:
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

    return asyncio.run(probe())


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
    if settings.api is None or not api_check:
        checks.append(Check("api", settings.api is not None, "[api] section missing"))
    else:
        checks.append(_api(settings))
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
    for section, verify in (
        ("api", settings.api.verify_tls if settings.api else True),
        ("storage", settings.storage.verify_tls),
    ):
        checks.append(
            Check(
                f"{section} TLS",
                verify,
                "certificates verified" if verify else f"{section}.verify_tls = false",
            )
        )
    return checks


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
