"""The ``sql`` source: the customer's own KYC database, read incrementally.

Any SQLAlchemy URL whose driver is installed (``psycopg`` for PostgreSQL comes with
the ``postgres`` extra; the operator installs any other). The configured ``query`` is
the operator's; this module binds only ``:watermark`` (and ``:id`` in ``key_query``)
and reads columns by name, case-insensitively:

========================  ========  ===============================================
column                    needed    meaning
========================  ========  ===============================================
``id``                    yes       the pass id (a UUID, text or native)
watermark column          yes       when the row last changed (``updated_at``)
``cipher_key``            no        Base64 AES-256 key, or NULL
``completed_at``          no        when the pass completed, or NULL
``image_retention_days``  no        0..5000, or NULL
========================  ========  ===============================================

Incremental reading. ``:watermark`` is bound to the catalog's watermark minus
``overlap_seconds`` (or 1970-01-01 on the first sync), so a row committed late with
an ``updated_at`` slightly older than rows already read is still seen; the upsert is
idempotent, so the rows read twice cost nothing. The new watermark is the largest
watermark value seen. Rejected rows still advance it: a fixed row gets a new
``updated_at`` and is read again.

Time zones. Timestamps are returned as aware UTC. A naive value from the database
(``timestamp without time zone``, or text in SQLite) is taken to be UTC; store UTC
or use ``timestamptz``. ``:watermark`` is bound as an aware UTC time on PostgreSQL
and as naive UTC elsewhere (on SQLite it is compared as text, so keep timestamps in
``YYYY-MM-DD HH:MM:SS`` form there).

Cipher keys. With ``store_cipher_keys = false`` (the default) a key read by the
query is checked and dropped: the pass carries ``key_ref`` (this source's name) and
:meth:`SqlSource.lookup_key` fetches the key with ``key_query`` when the pass is
processed. If the query returns no ``cipher_key`` column, every pass gets a
``key_ref`` when ``key_query`` is set. With ``store_cipher_keys = true`` the key goes
to the catalog, which seals it.

Rows are streamed (server-side cursor where the driver has one) and handed out in
chunks, so a first sync of a million rows never holds them all. Errors become
:class:`~archiver.errors.SourceError`; no message carries the URL, a row value or a
key.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from archiver.catalog import PassUpsert
from archiver.config import SqlSourceSettings
from archiver.errors import SourceError
from archiver.sources.records import (
    Rejection,
    normalise_pass_id,
    parse_cipher_key,
    parse_retention,
    parse_timestamp,
)

# Bound as :watermark on the first sync: older than any ID Pass, and inside the range
# of every database's timestamp type (MySQL's TIMESTAMP starts in 1970).
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_CHUNK_ROWS = 1000


@dataclass(frozen=True, slots=True)
class SourceBatch:
    """What one read of a source produced.

    ``read`` counts rows returned by the query; ``new_watermark`` is the largest
    watermark value among them (``None`` when no row had one).
    """

    items: list[PassUpsert] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    new_watermark: datetime | None = None
    read: int = 0


class _UtcParam(sa.types.TypeDecorator[datetime]):
    """A UTC instant as a bind parameter: aware for PostgreSQL, naive UTC elsewhere."""

    impl = sa.DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        return dialect.type_descriptor(sa.DateTime(timezone=dialect.name == "postgresql"))

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)


def _max(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


class SqlSource:
    """One configured ``sql`` source. Opens its engine on first use; thread-safe.

    Use as a context manager, or call :meth:`close` to release the connection pool.
    """

    def __init__(self, settings: SqlSourceSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        try:
            self._changes = sa.text(settings.query).bindparams(
                sa.bindparam("watermark", type_=_UtcParam())
            )
            # :id is left untyped so that `WHERE uuid_column = :id` works on PostgreSQL
            # (a typed VARCHAR bind would not compare with uuid).
            self._key_lookup = (
                sa.text(settings.key_query).bindparams(sa.bindparam("id"))
                if settings.key_query is not None
                else None
            )
        except ArgumentError:
            raise SourceError(
                "the query must bind :watermark and key_query must bind :id",
                source=self.name,
                retryable=False,
            ) from None

    # -- connection ---------------------------------------------------------------

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is not None:
                return self._engine
            url = self.settings.url
            if url is None:
                raise SourceError(
                    "no database URL (set the variable named by url_env, or url_file)",
                    source=self.name,
                    retryable=False,
                )
            try:
                self._engine = sa.create_engine(
                    url.get_secret_value(),
                    pool_pre_ping=True,
                    # Keep bound values (pass ids) out of SQLAlchemy's error strings.
                    hide_parameters=True,
                )
            except NoSuchModuleError:
                raise SourceError(
                    "the URL names a database dialect SQLAlchemy does not know",
                    source=self.name,
                    retryable=False,
                ) from None
            except ImportError as exc:
                raise SourceError(
                    f"the database driver is not installed (module {exc.name})",
                    source=self.name,
                    retryable=False,
                ) from None
            except (ArgumentError, ValueError):
                raise SourceError(
                    "the database URL is not a valid SQLAlchemy URL",
                    source=self.name,
                    retryable=False,
                ) from None
            return self._engine

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    def __enter__(self) -> SqlSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------

    def since(self, watermark: datetime | None) -> datetime:
        """The value bound to ``:watermark``: the watermark minus the overlap."""
        if watermark is None:
            return EPOCH
        if watermark.tzinfo is None:
            watermark = watermark.replace(tzinfo=UTC)
        return watermark.astimezone(UTC) - timedelta(seconds=self.settings.overlap_seconds)

    def iter_changes(
        self, watermark: datetime | None, *, chunk_rows: int = DEFAULT_CHUNK_ROWS
    ) -> Generator[SourceBatch, None, None]:
        """Rows changed since ``watermark`` (minus the overlap), ``chunk_rows`` at a time.

        Each batch's ``new_watermark`` is the largest value seen in that batch. Close
        the iterator (``contextlib.closing``) if you stop early.
        """
        engine = self._get_engine()
        try:
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=chunk_rows).execute(
                    self._changes, {"watermark": self.since(watermark)}
                )
                reader = _RowReader(self, list(result.keys()))
                for rows in result.partitions(chunk_rows):
                    yield reader.batch(rows)
        except SQLAlchemyError as exc:
            raise SourceError(
                f"reading changes failed ({type(exc).__name__})", source=self.name
            ) from None

    def lookup_key(self, pass_id: str) -> str | None:
        """The pass's cipher key, read with ``key_query`` now; ``None`` if it has none."""
        if self._key_lookup is None:
            raise SourceError(
                "no key_query is configured to look cipher keys up with",
                source=self.name,
                pass_id=pass_id,
                retryable=False,
            )
        engine = self._get_engine()
        try:
            with engine.connect() as conn:
                result = conn.execute(self._key_lookup, {"id": pass_id})
                columns = {k.lower(): i for i, k in enumerate(result.keys())}
                rows = result.fetchmany(2)
        except SQLAlchemyError as exc:
            raise SourceError(
                f"key lookup failed ({type(exc).__name__})", source=self.name, pass_id=pass_id
            ) from None
        if "cipher_key" not in columns:
            raise SourceError(
                "key_query returns no cipher_key column",
                source=self.name,
                pass_id=pass_id,
                retryable=False,
            )
        if not rows:
            return None
        if len(rows) > 1:
            raise SourceError(
                "key_query returned more than one row for the pass",
                source=self.name,
                pass_id=pass_id,
                retryable=False,
            )
        try:
            return parse_cipher_key(rows[0][columns["cipher_key"]])
        except ValueError as exc:
            raise SourceError(
                f"the cipher key it holds is unusable: {exc}",
                source=self.name,
                pass_id=pass_id,
                retryable=False,
            ) from None


class _RowReader:
    """Turns result rows into passes by column name, counting rows across chunks."""

    def __init__(self, source: SqlSource, keys: Sequence[str]) -> None:
        s = source.settings
        self.name = source.name
        self.store_keys = s.store_cipher_keys
        self.watermark_column = s.watermark_column.lower()
        self.columns = {k.lower(): i for i, k in enumerate(keys)}
        for needed in ("id", self.watermark_column):
            if needed not in self.columns:
                raise SourceError(
                    f"the query returns no {needed!r} column", source=self.name, retryable=False
                )
        self.has_key = "cipher_key" in self.columns
        if self.has_key and not self.store_keys and s.key_query is None:
            raise SourceError(
                "the query returns cipher_key but store_cipher_keys = false and no "
                "key_query is set",
                source=self.name,
                retryable=False,
            )
        # Without a cipher_key column we cannot tell who has a key: refer every pass.
        self.always_ref = not self.has_key and not self.store_keys and s.key_query is not None
        self.row_number = 0

    def _get(self, row: Sequence[Any], column: str) -> Any:
        i = self.columns.get(column)
        return None if i is None else row[i]

    def batch(self, rows: Iterable[Sequence[Any]]) -> SourceBatch:
        items: list[PassUpsert] = []
        rejected: list[Rejection] = []
        high: datetime | None = None
        read = 0
        for row in rows:
            self.row_number += 1
            read += 1
            try:
                mark = parse_timestamp(
                    self._get(row, self.watermark_column), self.watermark_column, naive="utc"
                )
            except ValueError as exc:
                rejected.append(Rejection(self.row_number, str(exc)))
                continue
            high = _max(high, mark)
            try:
                items.append(self._parse(row))
            except ValueError as exc:
                rejected.append(Rejection(self.row_number, str(exc)))
        return SourceBatch(items=items, rejected=rejected, new_watermark=high, read=read)

    def _parse(self, row: Sequence[Any]) -> PassUpsert:
        pass_id = normalise_pass_id(self._get(row, "id"))
        key = parse_cipher_key(self._get(row, "cipher_key"))
        completed_at = parse_timestamp(self._get(row, "completed_at"), "completed_at", naive="utc")
        retention = parse_retention(self._get(row, "image_retention_days"))
        if self.store_keys:
            cipher_key, key_ref = key, None
        else:
            cipher_key, key_ref = None, (self.name if key is not None or self.always_ref else None)
        return PassUpsert(
            pass_id=pass_id,
            source=self.name,
            cipher_key=cipher_key,
            completed_at=completed_at,
            image_retention_days=retention,
            key_ref=key_ref,
        )
