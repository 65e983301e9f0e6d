"""Typed, frozen settings: loaded once from a TOML file plus environment overrides.

Where the file is found: ``--config PATH``, else ``$IDPASS_ARCHIVER_CONFIG``.

Environment overrides: ``IDPASS_ARCHIVER_<SECTION>__<KEY>=value`` replaces
``[section] key`` (values are parsed as TOML scalars when they can be, so
``IDPASS_ARCHIVER_PIPELINE__CONCURRENCY=4`` is an integer).

Secrets never come from the TOML file or the command line. Each is one row of
:data:`SECRETS`, resolved by one loop (:func:`_with_secrets`); writing one in the
file, or as an override, is refused by name:

* the API token from ``$IDPASS_ARCHIVER_API_TOKEN`` or the file named by
  ``api.token_file``;
* the catalog's key-encryption key from ``$IDPASS_ARCHIVER_CATALOG_KEY`` or the file
  named by ``catalog.key_file`` (and the catalog URL, which may also be written in
  the file, from the file named by ``catalog.url_file``);
* a SQL source's URL (it holds the database password) from the environment variable
  named by ``sources[N].url_env`` or the file named by ``sources[N].url_file``. Such a
  variable is never read as an ``IDPASS_ARCHIVER_`` override;
* the SSE-C customer key from ``$IDPASS_ARCHIVER_SSE_CUSTOMER_KEY`` or the file named
  by ``storage.sse_customer_key_file``;
* the signing key from ``$IDPASS_ARCHIVER_SIGNING_KEY`` or the file named by
  ``signing.key_file``;
* AWS credentials through botocore's normal chain (environment, profile, IRSA).

A key that was removed (:data:`REMOVED_KEYS`) is refused with the reason, not ignored.

Only this module reads ``os.environ`` (through the mapping passed to :func:`load`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from archiver.errors import ConfigError

ENV_PREFIX = "IDPASS_ARCHIVER_"
CONFIG_ENV = "IDPASS_ARCHIVER_CONFIG"
TOKEN_ENV = "IDPASS_ARCHIVER_API_TOKEN"  # noqa: S105 - a variable name, not a secret
CATALOG_KEY_ENV = "IDPASS_ARCHIVER_CATALOG_KEY"
SIGNING_KEY_ENV = "IDPASS_ARCHIVER_SIGNING_KEY"
SSE_C_KEY_ENV = "IDPASS_ARCHIVER_SSE_CUSTOMER_KEY"


@dataclass(frozen=True, slots=True)
class _Secret:
    """A setting that is filled from the environment or a file, never from the TOML text.

    ``section`` is a table of :class:`Settings` (``"sources"``: each ``[[sources]]``
    table that has the field). The value comes from the variable ``env`` if it is set
    and not empty, else from the file named by ``file_key``. With ``env_key`` instead,
    the variable is the one named by that key, and exactly one of ``env_key`` and
    ``file_key`` must be given. An ``inline`` setting is an ordinary one that may be
    written in the file; a ``file_key`` replaces it (and it stays plain text).
    """

    section: str
    key: str
    file_key: str
    what: str
    env: str | None = None
    env_key: str | None = None
    inline: bool = False

    def origin(self, where: str) -> str:
        """Where the value may come from, for messages."""
        if self.env_key is not None:
            return (
                f"the environment variable named by {where}.{self.env_key} or the file "
                f"named by {where}.{self.file_key}"
            )
        return f"${self.env} or the file named by {where}.{self.file_key}"


#: Every secret of the configuration: one row each, resolved by :func:`_with_secrets`.
SECRETS: tuple[_Secret, ...] = (
    _Secret("api", "token", "token_file", "the API token", env=TOKEN_ENV),
    _Secret("catalog", "key", "key_file", "the catalog key", env=CATALOG_KEY_ENV),
    _Secret("catalog", "url", "url_file", "the catalog URL", inline=True),
    _Secret(
        "sources",
        "url",
        "url_file",
        "the source's SQLAlchemy URL",
        env_key="url_env",
    ),
    _Secret(
        "storage",
        "sse_customer_key",
        "sse_customer_key_file",
        "the SSE-C customer key",
        env=SSE_C_KEY_ENV,
    ),
    _Secret("signing", "key", "key_file", "the signing key", env=SIGNING_KEY_ENV),
)
_SECRET_ENV = frozenset({CONFIG_ENV} | {s.env for s in SECRETS if s.env is not None})
_SECRET_KEYS = {(s.section, s.key): s for s in SECRETS if not s.inline}

#: Keys that no longer exist, and why: a file that still sets one is told so.
REMOVED_KEYS: dict[tuple[str, str], str] = {
    ("pipeline", "batch_size"): (
        "this key was removed because it never had any effect (how many passes a worker "
        "claims at a time follows api.concurrency and pipeline.concurrency): delete it"
    ),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_T = TypeVar("_T", bound=_Section)


#: ``api.request_deadline_seconds`` when neither it nor a longer read timeout is set.
DEFAULT_DEADLINE_SECONDS = 120.0
#: What :func:`default_max_response_bytes` adds for the record and the JSON around it.
RECORD_MARGIN_BYTES = 1024 * 1024


def default_max_response_bytes(max_image_bytes: int) -> int:
    """``api.max_response_bytes`` when not set: the largest legitimate details answer.

    That is every documented slot (12) holding an image of ``pipeline.max_image_bytes``,
    as Base64 (4 characters per 3 bytes), plus 1/32 of that for JSON escapes (some
    encoders write ``/`` as ``\\/``: 1 in 64 Base64 characters), plus
    :data:`RECORD_MARGIN_BYTES` for the record. With the default 15 MiB images:
    260,571,136 bytes (about 249 MiB).
    """
    from archiver.idpass.models import SLOTS

    images = len(SLOTS) * 4 * -(-max_image_bytes // 3)
    return images + images // 32 + RECORD_MARGIN_BYTES


class ApiSettings(_Section):
    base_url: str = Field(pattern=r"^https?://")
    token_file: Path | None = None
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    read_timeout_seconds: float = Field(default=60.0, gt=0, le=600)
    # The most time one request may take in all, headers and body (the read timeout
    # applies to each read, so a server trickling bytes defeats it alone). At least
    # read_timeout_seconds; unset, 120 s or read_timeout_seconds if that is longer.
    # Waiting for a connection or a body slot does not count.
    request_deadline_seconds: float = Field(default=DEFAULT_DEADLINE_SECONDS, gt=0, le=3_600)
    # The largest response body accepted (bytes). Unset: derived from
    # pipeline.max_image_bytes (default_max_response_bytes), filled in at load.
    max_response_bytes: int | None = Field(default=None, ge=64 * 1024)
    # Accept plain http:// for a base_url that is not loopback (the token and cipher
    # keys then travel in clear): for test beds only; every run logs a warning.
    allow_insecure_http: bool = False
    # Bounds on one details answer beyond its size: image slots (null ones counted;
    # the API has 12) and bytes of record (the answer without its images).
    max_image_slots: int = Field(default=24, ge=12, le=256)
    max_record_bytes: int = Field(default=1024 * 1024, ge=64 * 1024, le=64 * 1024 * 1024)
    # |API clock - our clock| (from each answer's Date header) above which the run
    # logs api_clock_skew as a warning.
    clock_skew_warn_seconds: float = Field(default=300.0, gt=0, le=86_400)
    # Details requests in flight (HTTP connections to the API). Waiting for an answer
    # holds no memory: pipeline.concurrency bounds the response bodies held.
    concurrency: int = Field(default=12, ge=1, le=256)
    # Upper bound on details requests per second (0 = no limit).
    requests_per_second: float = Field(default=0.0, ge=0, le=10_000)
    # Attempts per request on 429/5xx/timeouts/resets/truncated bodies (1 = no retry),
    # with exponential backoff and full jitter from retry_base_seconds; a 429's
    # Retry-After is honoured up to retry_max_wait_seconds.
    max_attempts: int = Field(default=4, ge=1, le=20)
    retry_base_seconds: float = Field(default=0.5, gt=0, le=60)
    retry_max_wait_seconds: float = Field(default=60.0, gt=0, le=3_600)
    verify_tls: bool = True
    # filled from the environment or token_file, never from TOML
    token: SecretStr | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_deadline(cls, data: Any) -> Any:
        """Unset, the deadline is never shorter than the read timeout (a file that sets
        a long read timeout keeps working)."""
        if isinstance(data, dict) and "request_deadline_seconds" not in data:
            read = data.get("read_timeout_seconds")
            if isinstance(read, int | float) and not isinstance(read, bool):
                deadline = max(DEFAULT_DEADLINE_SECONDS, float(read))
                return {**data, "request_deadline_seconds": deadline}
        return data

    @model_validator(mode="after")
    def _deadline_covers_a_read(self) -> ApiSettings:
        if self.request_deadline_seconds < self.read_timeout_seconds:
            raise ValueError(
                "request_deadline_seconds must be at least read_timeout_seconds "
                f"({self.read_timeout_seconds:g})"
            )
        return self


class StorageSettings(_Section):
    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]+[a-z0-9]$")
    prefix: str = Field(default="idpass", pattern=r"^[A-Za-z0-9!_.*'()\-/]*$")
    endpoint_url: str | None = None
    region: str = "ap-southeast-2"
    sse: Literal["aws:kms", "AES256", "SSE-C"] = "aws:kms"
    kms_key_id: str | None = None
    # SSE-C: a file holding the customer key (Base64 of 32 random bytes), or
    # $IDPASS_ARCHIVER_SSE_CUSTOMER_KEY. verify and export need it too.
    sse_customer_key_file: Path | None = None
    sse_customer_key: SecretStr | None = Field(default=None, exclude=True)
    max_pool_connections: int = Field(default=32, ge=1, le=1024)
    upload_threads: int = Field(default=16, ge=1, le=256)
    # How objects are put: "crt" (the AWS Common Runtime: signing and I/O in C, about a
    # third of botocore's CPU per put) or "botocore" (botocore's own put_object).
    put_client: Literal["crt", "botocore"] = "crt"
    verify_tls: bool = True
    # Accept a plain http:// endpoint_url that is not loopback (credentials' signatures,
    # and an SSE-C key, then travel in clear): for test beds only; runs log a warning.
    allow_insecure_http: bool = False
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    read_timeout_seconds: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _kms_needs_key(self) -> StorageSettings:
        if self.sse == "aws:kms" and not self.kms_key_id:
            raise ValueError("kms_key_id is required when sse = 'aws:kms'")
        return self

    @property
    def clean_prefix(self) -> str:
        return self.prefix.strip("/")


class CatalogSettings(_Section):
    url: str = "sqlite:///idpass-archiver-catalog.db"
    # A file holding the full catalog URL (a PostgreSQL URL carries a password).
    url_file: Path | None = None
    key_file: Path | None = None
    # How long a worker owns the passes it claimed; a dead worker's passes are
    # taken over by others once this runs out.
    lease_seconds: int = Field(default=600, ge=5, le=86_400)
    # Names this process in leases and run manifests (default: hostname-pid).
    worker_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")
    key: SecretStr | None = Field(default=None, exclude=True)


class PipelineSettings(_Section):
    concurrency: int = Field(default=4, ge=1, le=256)
    max_image_bytes: int = Field(default=15 * 1024 * 1024, ge=1024)
    archive_statuses: tuple[str, ...] = ("complete",)
    decryption: Literal["server", "local", "passthrough"] = "server"
    # Pass-level retries across runs: after this many attempts a pass is `failed`.
    max_attempts: int = Field(default=5, ge=1, le=100)
    retry_base_seconds: int = Field(default=300, ge=1)
    retry_cap_seconds: int = Field(default=21_600, ge=1)
    # A pass not complete yet is checked again after this, doubling each time...
    not_ready_recheck_seconds: int = Field(default=3_600, ge=1)
    # ...and given up (`skipped`) this long after its link stopped being valid.
    not_ready_margin_hours: int = Field(default=24, ge=0)
    # Confirmed absence: an answer with no images, or a slot null, is read again this
    # many times, this far apart, before the pass settles (0: one answer decides).
    confirm_reads: int = Field(default=2, ge=0, le=20)
    confirm_spacing_seconds: int = Field(default=5, ge=0, le=86_400)
    # A run waits this long at most for the confirming reads it scheduled; a spacing
    # longer than this leaves them to a later run.
    confirm_wait_seconds: int = Field(default=300, ge=0, le=3_600)
    # No confirming read is scheduled later than this before the pass's deadline:
    # the pass settles with what was seen.
    confirm_margin_seconds: int = Field(default=3_600, ge=0)

    @model_validator(mode="after")
    def _statuses(self) -> PipelineSettings:
        allowed = {"complete", "failed"}
        bad = [s for s in self.archive_statuses if s not in allowed]
        if bad:
            raise ValueError(f"archive_statuses may contain only {sorted(allowed)}, got {bad}")
        return self


class ScheduleSettings(_Section):
    # When `idpass-archiver schedule` runs a cycle (crontab syntax, 5 fields; a
    # 6-field form with seconds first is accepted for fast cycles). Also
    # tells `run` when the next run is, so passes due before it are flagged at risk.
    cron: str = "0 * * * *"
    timezone: str = "UTC"
    # A run that could not start on time still starts if it is at most this late.
    misfire_grace_seconds: int = Field(default=3_600, ge=1)
    # On SIGTERM, how long passes in flight may take to finish.
    stop_grace_seconds: int = Field(default=25, ge=0, le=3_600)

    @model_validator(mode="after")
    def _valid_cron(self) -> ScheduleSettings:
        from archiver.scheduler import make_trigger

        try:
            make_trigger(self.cron, self.timezone)
        except (ValueError, LookupError) as exc:
            raise ValueError(f"cron {self.cron!r} is not a valid crontab entry: {exc}") from None
        return self


class SqlSourceSettings(_Section):
    """A SQL database the customer owns (their KYC system), read incrementally.

    Checked when the file is loaded (:func:`from_mapping`): exactly one of
    ``url_env`` / ``url_file``; ``query`` binds ``:watermark``; ``key_query`` (binding
    ``:id``) is required when keys stay in the source and the query returns them;
    ``store_cipher_keys = true`` needs a catalog key to seal them with.
    """

    kind: Literal["sql"]
    name: str = Field(pattern=r"^[a-z0-9_\-]{1,32}$")
    # The SQLAlchemy URL comes from an environment variable or a file (it holds a
    # password), never from this file.
    url_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    url_file: Path | None = None
    # Returns id, cipher_key (or NULL), completed_at (or NULL), image_retention_days
    # (or NULL) and the watermark column, for rows changed after :watermark.
    query: str = Field(min_length=1)
    watermark_column: str = Field(default="updated_at", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    overlap_seconds: int = Field(default=300, ge=0, le=30 * 86_400)
    # false: cipher keys stay in the source and are looked up with key_query when a
    # pass is processed; true: they are sealed into the catalog.
    store_cipher_keys: bool = False
    key_query: str | None = Field(default=None, min_length=1)
    # filled from url_env or url_file, never from TOML
    url: SecretStr | None = Field(default=None, exclude=True)


class FileSourceSettings(_Section):
    """A JSONL or CSV export dropped by the customer's systems."""

    kind: Literal["file"]
    name: str = Field(pattern=r"^[a-z0-9_\-]{1,32}$")
    path: Path
    format: Literal["jsonl", "csv"] | None = None


SourceSettings = Annotated[SqlSourceSettings | FileSourceSettings, Field(discriminator="kind")]


class SigningSettings(_Section):
    """Ed25519 signing of manifests and run manifests."""

    # The private key (PKCS#8 PEM, `openssl genpkey -algorithm ed25519`), or
    # $IDPASS_ARCHIVER_SIGNING_KEY holding the PEM text.
    key_file: Path | None = None
    # Public keys `verify` trusts (PEM); the signing key's own public key is always
    # trusted. List old keys here after a rotation.
    public_key_files: tuple[Path, ...] = ()
    key: SecretStr | None = Field(default=None, exclude=True)


class ObjectLockSettings(_Section):
    """S3 Object Lock retention on every object written (the bucket must have it on)."""

    mode: Literal["COMPLIANCE", "GOVERNANCE"] | None = None
    retain_days: int = Field(default=2555, ge=1, le=36_500)


class ClientSideEncryptionSettings(_Section):
    """End-to-end encryption: images and records are encrypted to these age X25519
    recipients before upload; the archiver itself holds no key that can read them."""

    recipients: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _valid_recipients(self) -> ClientSideEncryptionSettings:
        from pyrage import x25519

        for n, r in enumerate(self.recipients):
            try:
                x25519.Recipient.from_str(r)
            except Exception:
                raise ValueError(
                    f"recipients[{n}] is not an age X25519 recipient (age1...)"
                ) from None
        return self


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MetricsSettings(_Section):
    """Prometheus metrics of each run (archiver/metrics.py); neither target set: none."""

    # Push each run's metrics to this Pushgateway (POST /metrics/job/<job>/...).
    pushgateway_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+")
    # The Pushgateway job name (grouping key `job`).
    job: str = Field(default="idpass-archiver", pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    # Seconds to connect and send to the Pushgateway.
    timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Write a node-exporter textfile (atomically) after each run; must end in .prom.
    textfile_path: Path | None = None

    @field_validator("textfile_path")
    @classmethod
    def _prom_suffix(cls, path: Path | None) -> Path | None:
        if path is not None and path.suffix != ".prom":
            raise ValueError("must end in .prom (node-exporter reads only those)")
        return path

    @property
    def enabled(self) -> bool:
        """A target is set: each run publishes its metrics."""
        return self.pushgateway_url is not None or self.textfile_path is not None


class Settings(_Section):
    # Optional so that an auditor's `verify` needs only [storage] and a public key;
    # `run`, `backfill` and `schedule` refuse to start without it.
    api: ApiSettings | None = None
    storage: StorageSettings
    catalog: CatalogSettings = CatalogSettings()
    pipeline: PipelineSettings = PipelineSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    sources: tuple[SourceSettings, ...] = ()
    signing: SigningSettings = SigningSettings()
    object_lock: ObjectLockSettings = ObjectLockSettings()
    client_side_encryption: ClientSideEncryptionSettings = ClientSideEncryptionSettings()
    logging: LoggingSettings = LoggingSettings()
    metrics: MetricsSettings = MetricsSettings()
    source_path: Path | None = Field(default=None, exclude=True)

    def require_api(self) -> ApiSettings:
        if self.api is None:
            raise ConfigError("the [api] section is required for this command", key="api.base_url")
        return self.api

    def fingerprint(self) -> str:
        """SHA-256 of :meth:`fingerprint_input`: which settings a run used. It is
        stored in every run manifest, unsalted, so its input holds no secret: a hash
        of a password among known settings is the password, to anyone who guesses."""
        import orjson

        data = orjson.dumps(self.fingerprint_input(), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(data).hexdigest()

    def fingerprint_input(self) -> dict[str, Any]:
        """The settings without any secret: every field of :data:`SECRETS` (the value
        and the file it is read from) left out, and the user and password of every
        URL-like setting, and its query parameters that look like credentials, too."""
        data = self.model_dump(mode="json", exclude={"source_path"})
        for secret in SECRETS:
            tables = data.get(secret.section)
            for table in tables if isinstance(tables, list) else [tables]:
                if isinstance(table, dict):
                    table.pop(secret.key, None)
                    table.pop(secret.file_key, None)
        stripped: dict[str, Any] = _without_credentials(data)
        return stripped


#: Query parameter names of a URL that carry credentials (``?password=...``).
_CREDENTIAL_PARAM = re.compile(r"pass|pwd|secret|token|key|cred|auth|sig", re.IGNORECASE)


def _without_credentials(value: Any) -> Any:
    """``value`` (settings as JSON) with every URL-like string's credentials removed."""
    if isinstance(value, dict):
        return {k: _without_credentials(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_credentials(v) for v in value]
    if isinstance(value, str) and "://" in value:
        return _url_without_credentials(value)
    return value


def _url_without_credentials(url: str) -> str:
    """``url`` without its user info and credential-like query parameters; a string
    that does not parse as a URL is left out (it might hold anything)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port is not None:
            netloc += f":{parts.port}"
    except ValueError:
        return "(not a URL)"
    query = "&".join(
        pair for pair in parts.query.split("&") if pair and not _CREDENTIAL_PARAM.search(pair)
    )
    return parts._replace(netloc=netloc, query=query, fragment="").geturl()


def _scalar(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _apply_env(
    data: dict[str, Any], environ: Mapping[str, str], skip: frozenset[str] = frozenset()
) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in _SECRET_ENV or name in skip:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if len(path) != 2 or not all(path):
            raise ConfigError(
                f"environment override {name} must look like {ENV_PREFIX}<SECTION>__<KEY>"
            )
        section, key = path
        secret = _SECRET_KEYS.get((section, key))
        if secret is not None:
            raise ConfigError(
                f"{name}: secrets are not overrides: {secret.what} comes from "
                f"{secret.origin(section)}"
            )
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"[{section}] is not a table", key=section)
        data[section][key] = _scalar(value)


def _read_secret_file(path: Path, key: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file ({exc.strerror})", key=key) from None
    if not text:
        raise ConfigError("secret file is empty", key=key)
    return text


def _format_loc(loc: tuple[int | str, ...]) -> str:
    """``sources.0.sql.query`` -> ``sources[0].query`` (the kind tag is dropped)."""
    parts = list(loc)
    if len(parts) >= 3 and parts[0] == "sources" and parts[2] in {"sql", "file"}:
        del parts[2]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _format_validation(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = _format_loc(err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against config/archiver.example.toml)"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)


def _raw_tables(data: dict[str, Any], section: str) -> list[tuple[str, dict[str, Any]]]:
    """``[section]``'s table, or each ``[[section]]`` table, as parsed, with its name."""
    value = data.get(section)
    if isinstance(value, dict):
        return [(section, value)]
    if isinstance(value, list):
        return [(f"{section}[{i}]", t) for i, t in enumerate(value) if isinstance(t, dict)]
    return []


def _refuse_in_file(data: dict[str, Any]) -> None:
    """Secrets written in the file, and keys that were removed (written in the file or
    set by an override), are refused by name."""
    for secret in _SECRET_KEYS.values():
        for where, table in _raw_tables(data, secret.section):
            if secret.key in table:
                raise ConfigError(
                    f"secrets may not be written in the config file: {secret.what} comes "
                    f"from {secret.origin(where)}",
                    key=f"{where}.{secret.key}",
                )
    for (section, key), why in REMOVED_KEYS.items():
        for where, table in _raw_tables(data, section):
            if key in table:
                raise ConfigError(why, key=f"{where}.{key}")


def _source_url_envs(data: dict[str, Any]) -> frozenset[str]:
    """The variables named by ``sources[].url_env``: secrets, not overrides."""
    return frozenset(
        t["url_env"] for _, t in _raw_tables(data, "sources") if isinstance(t.get("url_env"), str)
    )


def _named_variable(
    secret: _Secret, env_key: str, table: BaseModel, where: str, env: Mapping[str, str]
) -> str:
    """A secret from the variable named by ``env_key``, or from its file: exactly one."""
    name: str | None = getattr(table, env_key)
    path: Path | None = getattr(table, secret.file_key)
    if path is not None and name is None:
        return _read_secret_file(path, f"{where}.{secret.file_key}")
    if name is None or path is not None:
        raise ConfigError(
            f"give exactly one of {env_key} (the name of an environment variable "
            f"holding {secret.what}) or {secret.file_key} (a file holding it)",
            key=f"{where}.{env_key}",
        )
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(
            f"environment variable {name} is not set or empty", key=f"{where}.{env_key}"
        )
    return value


def _secret_value(
    secret: _Secret, table: BaseModel, where: str, env: Mapping[str, str]
) -> str | None:
    """The secret's value (``None``: not given), read as its row of :data:`SECRETS` says."""
    if secret.env_key is not None:
        return _named_variable(secret, secret.env_key, table, where, env)
    value = env.get(secret.env) if secret.env is not None else None
    path: Path | None = getattr(table, secret.file_key)
    if not value and path is not None:
        value = _read_secret_file(path, f"{where}.{secret.file_key}")
    return value or None


def _fill(table: _T, where: str, env: Mapping[str, str]) -> _T:
    """``table`` with its secrets (the rows of :data:`SECRETS` for its fields) filled in."""
    section = where.split("[", 1)[0]
    update: dict[str, Any] = {}
    for secret in SECRETS:
        if secret.section != section or secret.key not in type(table).model_fields:
            continue  # another table's, or a file source (which has no URL)
        value = _secret_value(secret, table, where, env)
        if not secret.inline:
            update[secret.key] = SecretStr(value) if value else None
        elif value is not None:
            update[secret.key] = value
    return table.model_copy(update=update) if update else table


def _with_secrets(settings: Settings, env: Mapping[str, str]) -> Settings:
    """Every secret of :data:`SECRETS` resolved, in the table's order."""
    update: dict[str, Any] = {}
    for section in dict.fromkeys(s.section for s in SECRETS):
        current = getattr(settings, section)
        if isinstance(current, tuple):
            update[section] = tuple(_fill(t, f"{section}[{i}]", env) for i, t in enumerate(current))
        elif current is not None:
            update[section] = _fill(current, section, env)
    return settings.model_copy(update=update)


def _binds(query: str, name: str) -> bool:
    """Whether a user's query binds ``:name`` (a PostgreSQL ``::cast`` does not count)."""
    return re.search(rf"(?<![:\w]):{name}\b", query) is not None


def _check_sql_source(src: SqlSourceSettings, where: str, *, have_catalog_key: bool) -> None:
    if not _binds(src.query, "watermark"):
        raise ConfigError(
            "the query must bind :watermark (e.g. WHERE updated_at > :watermark) so "
            "that only changed rows are read",
            key=f"{where}.query",
        )
    if src.key_query is not None and not _binds(src.key_query, "id"):
        raise ConfigError(
            "key_query must bind :id (the pass id) and return one row with a cipher_key column",
            key=f"{where}.key_query",
        )
    if (
        not src.store_cipher_keys
        and src.key_query is None
        and re.search(r"\bcipher_key\b", src.query, re.IGNORECASE)
    ):
        raise ConfigError(
            "the query returns cipher_key but store_cipher_keys = false, so keys stay "
            "in the source: set key_query to a query that binds :id and returns one "
            "row with a cipher_key column (or set store_cipher_keys = true to seal "
            "them into the catalog)",
            key=f"{where}.key_query",
        )
    if src.store_cipher_keys and not have_catalog_key:
        raise ConfigError(
            f"store_cipher_keys = true needs a catalog key to seal the keys with: set "
            f"{CATALOG_KEY_ENV} or catalog.key_file",
            key=f"{where}.store_cipher_keys",
        )


def _check_sources(settings: Settings) -> None:
    """Cross-field checks on ``[[sources]]``. Messages name the key
    (``sources[N].query``) and never contain a URL."""
    seen: dict[str, int] = {}
    for i, src in enumerate(settings.sources):
        where = f"sources[{i}]"
        if src.name in seen:
            raise ConfigError(
                f"source name {src.name!r} is already used by sources[{seen[src.name]}]",
                key=f"{where}.name",
            )
        seen[src.name] = i
        if isinstance(src, SqlSourceSettings):
            _check_sql_source(src, where, have_catalog_key=settings.catalog.key is not None)


def _check_sse_c(storage: StorageSettings) -> None:
    """``sse = 'SSE-C'`` needs a customer key, Base64 of 32 bytes."""
    if storage.sse != "SSE-C":
        return
    if storage.sse_customer_key is None:
        raise ConfigError(
            f"sse = 'SSE-C' needs a customer key: storage.sse_customer_key_file or {SSE_C_KEY_ENV}",
            key="storage.sse_customer_key_file",
        )
    try:
        if len(base64.b64decode(storage.sse_customer_key.get_secret_value(), validate=True)) != 32:
            raise ValueError
    except ValueError:
        raise ConfigError(
            "the SSE-C key must be Base64 of 32 bytes (`openssl rand -base64 32`)",
            key="storage.sse_customer_key_file",
        ) from None


def is_loopback(url: str) -> bool:
    """Whether ``url``'s host is this machine: ``localhost``, 127.0.0.0/8 or ``::1``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _plain_http_endpoints(settings: Settings) -> list[tuple[str, str, bool]]:
    """(setting, URL, allowed) for each endpoint given as http:// to another host."""
    found = []
    if settings.api is not None:
        found.append(("api.base_url", settings.api.base_url, settings.api.allow_insecure_http))
    endpoint = settings.storage.endpoint_url
    if endpoint is not None:
        found.append(("storage.endpoint_url", endpoint, settings.storage.allow_insecure_http))
    return [
        (key, url, allowed)
        for key, url, allowed in found
        if urlsplit(url).scheme.lower() == "http" and not is_loopback(url)
    ]


def _check_transport_security(settings: Settings) -> None:
    """Plain http:// is for loopback only, unless the section allows it by name."""
    for key, _url, allowed in _plain_http_endpoints(settings):
        if not allowed:
            section = key.split(".", 1)[0]
            raise ConfigError(
                "plain http:// is refused for a host that is not loopback (the API "
                "token, cipher keys and S3 credentials would travel in clear): use "
                f"https://, or set {section}.allow_insecure_http = true on a test bed",
                key=key,
            )


def warn_insecure_transport(settings: Settings) -> list[str]:
    """Log a warning for each endpoint allowed to use plain http:// to another host
    (``allow_insecure_http``); the settings named. Called before each run (and by
    doctor), so the choice is never forgotten."""
    log = structlog.get_logger("archiver.config")
    keys = [key for key, _url, allowed in _plain_http_endpoints(settings) if allowed]
    for key in keys:
        log.warning(
            "insecure_http_allowed",
            setting=key,
            note="plain http:// to a host that is not loopback: secrets travel in clear",
        )
    return keys


def _with_response_cap(settings: Settings) -> Settings:
    """``api.max_response_bytes`` filled in from ``pipeline.max_image_bytes`` if unset."""
    api = settings.api
    if api is None or api.max_response_bytes is not None:
        return settings
    cap = default_max_response_bytes(settings.pipeline.max_image_bytes)
    return settings.model_copy(update={"api": api.model_copy(update={"max_response_bytes": cap})})


def from_mapping(
    data: dict[str, Any],
    environ: Mapping[str, str] | None = None,
    source_path: Path | None = None,
) -> Settings:
    """Build settings from already-parsed TOML data plus environment overrides."""
    env = os.environ if environ is None else environ
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    _apply_env(data, env, skip=_source_url_envs(data))
    _refuse_in_file(data)
    try:
        settings = Settings.model_validate({**data, "source_path": source_path})
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc)) from None
    settings = _with_secrets(settings, env)
    _check_sources(settings)
    _check_sse_c(settings.storage)
    _check_transport_security(settings)
    return _with_response_cap(settings)


def load(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load the settings once, at the entry point. Raises :class:`ConfigError`."""
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no configuration file: pass --config FILE or set {CONFIG_ENV}")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p} ({exc.strerror})") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p} is not valid TOML: {exc}") from None
    return from_mapping(data, env, source_path=p.resolve())
