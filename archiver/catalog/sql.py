"""The catalog over SQLAlchemy Core: SQLite embedded by default, PostgreSQL when shared.

Schema migrations are a numbered list applied in order inside one transaction each;
the current version is kept in ``schema_version``. Migrations only add: they never
drop data. A database written by a newer archiver (higher version) is refused.

Many processes may open a catalog at once (workers starting together on a fresh
PostgreSQL database): a migration runs while its process holds the schema lock, a
transaction-scoped advisory lock on PostgreSQL and the database file's write lock
(``BEGIN IMMEDIATE``) on SQLite, and the version is read again under that lock, so
each migration is applied exactly once.

Workers share the due passes through leases: :meth:`SqlCatalog.claim` marks a batch
as theirs until ``lease_expires_at``; on PostgreSQL rows another worker is claiming
are skipped (``FOR UPDATE SKIP LOCKED``), on SQLite the claim is one ``UPDATE ...
RETURNING`` and the database has a single writer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from archiver.catalog import (
    WORK_STATES,
    CatalogEntry,
    Outcome,
    OutcomeUpdate,
    PassUpsert,
    Scope,
    UnlistedPass,
    UpsertStats,
)
from archiver.catalog.coverage import Coverage, DayCoverage, FailedPass, UpcomingDeadline
from archiver.catalog.keys import KeySealer
from archiver.core.retention import images_deadline
from archiver.errors import CatalogError


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores naive UTC, returns aware UTC: the same on SQLite and PostgreSQL."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the catalog")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


metadata = sa.MetaData()

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("applied_at", UTCDateTime, nullable=False),
)


def _v1_pass_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("pass_id", sa.String(128), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False, default=Outcome.PENDING.value),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("sealed_cipher_key", sa.Text, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("image_retention_days", sa.Integer, nullable=True),
        sa.Column("deadline", UTCDateTime, nullable=True),
        sa.Column("api_status", sa.String(16), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False, default=0),
        sa.Column("next_attempt_at", UTCDateTime, nullable=True),
        sa.Column("last_reason", sa.Text, nullable=True),
        sa.Column("manifest_key", sa.Text, nullable=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    ]


def _v2_pass_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("key_ref", sa.String(64), nullable=True),
        sa.Column("link_expires_at", UTCDateTime, nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    ]


def _v4_pass_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("archived_at", UTCDateTime, nullable=True),
        sa.Column("image_count", sa.Integer, nullable=True),
        sa.Column("image_bytes", sa.BigInteger, nullable=True),
    ]


def _v5_pass_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("checks", sa.Integer, nullable=True),
        sa.Column("confirmations", sa.Integer, nullable=True),
        sa.Column("seen_slots", sa.Text, nullable=True),
    ]


def _v6_pass_columns() -> list[sa.Column[Any]]:
    # The run whose stored, chained run manifest lists the pass's current manifest;
    # None for an archived pass no run manifest lists yet (its run died first).
    return [sa.Column("listed_run_id", sa.String(64), nullable=True)]


passes = sa.Table(
    "passes",
    metadata,
    *_v1_pass_columns(),
    *_v2_pass_columns(),
    *_v4_pass_columns(),
    *_v5_pass_columns(),
    *_v6_pass_columns(),
)
sa.Index("ix_passes_state_deadline", passes.c.state, passes.c.deadline)
# Also ix_passes_unlisted (migration 6): a partial index over the archived passes no
# run manifest lists, in pass-id order (see SqlCatalog.unlisted).
# Also ix_passes_due (migration 3): a partial index over the passes with work left,
# on (deadline NULLS FIRST, pass_id): the order in which they are due.

# The states with work left, as migration 5 wrote them into ix_passes_due's predicate.
# Queries that should use that index repeat them as literals (not bound parameters), so
# that SQLite and PostgreSQL can prove the index covers them whatever the parameters.
# (A test checks they still equal WORK_STATES; if those change, add a migration.)
DUE_STATES = ("pending", "retry", "not_ready", "confirming")
_V3_DUE_STATES = ("pending", "retry", "not_ready")  # as migration 3 shipped them

source_watermarks = sa.Table(
    "source_watermarks",
    metadata,
    sa.Column("source", sa.String(64), primary_key=True),
    sa.Column("watermark", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


def _v1_run_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("started_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=False),
        sa.Column("exit_code", sa.Integer, nullable=False),
        sa.Column("summary_json", sa.Text, nullable=False),
    ]


def _v4_run_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("worker_id", sa.String(64), nullable=True),
        sa.Column("manifest_key", sa.Text, nullable=True),
        sa.Column("manifest_sha256", sa.String(64), nullable=True),
    ]


runs = sa.Table("runs", metadata, *_v1_run_columns(), *_v4_run_columns())

# The head of the hash chain of run manifests (one chain per chain id).
run_chain = sa.Table(
    "run_chain",
    metadata,
    sa.Column("chain_id", sa.String(64), primary_key=True),
    sa.Column("head_key", sa.Text, nullable=False),
    sa.Column("head_sha256", sa.String(64), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)


def _migration_1(conn: Connection) -> None:
    """The first schema, as version 1 shipped it."""
    v1 = sa.MetaData()
    table = sa.Table("passes", v1, *_v1_pass_columns())
    sa.Index("ix_passes_state_deadline", table.c.state, table.c.deadline)
    sa.Table("runs", v1, *_v1_run_columns())
    v1.create_all(conn)


def _migration_2(conn: Connection) -> None:
    """Key references, link expiry and worker leases; source watermarks."""
    _add_columns(conn, "passes", _v2_pass_columns())
    source_watermarks.create(conn)


def _migration_3(conn: Connection) -> None:
    """The due-order index: the next batch of due passes is read from the front of a
    small index instead of sorting every due pass (see the README's benchmark)."""
    _create_due_index(conn, _V3_DUE_STATES)


def _create_due_index(conn: Connection, due_states: tuple[str, ...]) -> None:
    states = ", ".join(f"'{s}'" for s in due_states)
    # SQLite sorts NULLs first in ascending order and takes no NULLS FIRST in an index.
    deadline = "deadline NULLS FIRST" if conn.dialect.name == "postgresql" else "deadline"
    conn.execute(
        sa.text(
            f"CREATE INDEX ix_passes_due ON passes ({deadline}, pass_id) WHERE state IN ({states})"
        )
    )


def _add_columns(conn: Connection, table: str, columns: list[sa.Column[Any]]) -> None:
    for column in columns:
        ddl = column.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column.name} {ddl}"))


def _migration_4(conn: Connection) -> None:
    """What each archived pass holds (for reports), run manifests and their chain."""
    _add_columns(conn, "passes", _v4_pass_columns())
    _add_columns(conn, "runs", _v4_run_columns())
    run_chain.create(conn)


def _migration_5(conn: Connection) -> None:
    """Confirmed absence: not_ready re-checks and confirming reads counted apart from
    error attempts, what each read saw per slot, and the ``confirming`` state in the
    due-order index."""
    _add_columns(conn, "passes", _v5_pass_columns())
    conn.execute(sa.text("DROP INDEX ix_passes_due"))
    _create_due_index(conn, DUE_STATES)


def _migration_6(conn: Connection) -> None:
    """Which run manifest lists each archived pass: passes committed by a run that
    died before storing its run manifest are found (one partial index) and listed by
    a later run. Passes archived before this migration start unlisted: the next runs
    list them again, as recovered (at most
    :data:`archiver.core.runlog.RECOVERED_PER_RUN` per run)."""
    _add_columns(conn, "passes", _v6_pass_columns())
    conn.execute(
        sa.text(
            # listed_run_id leads (always NULL here) so that SQLite's planner, which
            # has no statistics, prefers this index to ix_passes_state_deadline
            "CREATE INDEX ix_passes_unlisted ON passes (listed_run_id, pass_id) "
            "WHERE state = 'archived' AND listed_run_id IS NULL"
        )
    )


MIGRATIONS = [
    (1, _migration_1),
    (2, _migration_2),
    (3, _migration_3),
    (4, _migration_4),
    (5, _migration_5),
    (6, _migration_6),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]

# The key of the PostgreSQL advisory lock held while the schema is checked and
# migrated ("idpassar" as a big-endian 64-bit integer).
SCHEMA_LOCK_KEY = int.from_bytes(b"idpassar", "big")
# ... and of the one held while the run-manifest chain is extended ("idpchain").
CHAIN_LOCK_KEY = int.from_bytes(b"idpchain", "big")


def _now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def catalog_errors(operation: str) -> Iterator[None]:
    """Translate a database failure inside the block into a :class:`CatalogError`.

    The message is ``operation`` and the exception's type, e.g. ``cannot claim passes
    (OperationalError)``: never the exception's own text, which may hold the URL, a
    statement or its row values. The SQLAlchemy exception is kept as the context, not
    the cause, so a traceback shows neither. Other exceptions pass through unchanged.
    """
    try:
        yield
    except SQLAlchemyError as exc:
        raise CatalogError(f"{operation} ({type(exc).__name__})") from None


class SqlCatalog:
    """:class:`archiver.catalog.Catalog` over a SQLAlchemy URL."""

    def __init__(self, url: str, *, sealer: KeySealer | None = None) -> None:
        self._sealer = sealer
        try:
            with catalog_errors("cannot open the catalog"):
                self._engine = self._create_engine(url)
        except ImportError as exc:  # the URL names a driver that is not installed
            raise CatalogError(
                f"cannot open the catalog: driver {exc.name or '?'} is not installed "
                "(for PostgreSQL: pip install 'idpass-archiver[postgres]')"
            ) from None
        try:
            with catalog_errors("cannot open the catalog"):
                self._migrate()
        except BaseException:
            self._engine.dispose()  # no pooled connection outlives a refused open
            raise

    def _create_engine(self, url: str) -> Engine:
        parsed = sa.make_url(url)
        # Never keep the password where a repr or a log line could show it.
        self.url = parsed.render_as_string(hide_password=True)
        options: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite":
            _make_parent_dir(parsed)
        else:
            # A scheduler outlives database restarts: test a pooled connection
            # before handing it out.
            options["pool_pre_ping"] = True
        engine = sa.create_engine(parsed, **options)
        if engine.dialect.name == "sqlite":
            sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    # -- schema -------------------------------------------------------------------

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self._engine.dialect.name)

    def _migrate(self) -> None:
        """Bring the schema to :data:`SCHEMA_VERSION`, one migration per transaction.

        The common case (already current) reads the version without a lock; otherwise
        each step takes the schema lock, reads the version again and applies the next
        migration, so processes opening a fresh catalog together apply each once.
        """
        with self._engine.connect() as conn:
            current = _read_version(conn)
        _refuse_newer(current)
        while current < SCHEMA_VERSION:
            with self._schema_lock() as conn:
                metadata.create_all(conn, tables=[schema_version])
                current = _read_version(conn)
                _refuse_newer(current)
                pending = [(v, step) for v, step in MIGRATIONS if v > current]
                if not pending:
                    break
                version, step = pending[0]
                step(conn)
                conn.execute(schema_version.insert().values(version=version, applied_at=_now()))
                current = version

    def _schema_lock(self) -> AbstractContextManager[Connection]:
        return self._exclusive(SCHEMA_LOCK_KEY)

    @contextmanager
    def _exclusive(self, lock_key: int) -> Iterator[Connection]:
        """A transaction holding an exclusive lock (released at its end): the advisory
        lock ``lock_key`` on PostgreSQL, the database's write lock on SQLite."""
        if self.dialect == "sqlite":
            # The driver's own transaction handling would start the transaction only
            # at the first INSERT and leave DDL outside it: begin it ourselves, taking
            # the write lock at once (other openers wait on busy_timeout).
            with self._engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                conn.exec_driver_sql("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.exec_driver_sql("ROLLBACK")
                    raise
                conn.exec_driver_sql("COMMIT")
            return
        with self._engine.begin() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(lock_key)))
            yield conn

    @property
    def schema_version(self) -> int:
        with catalog_errors("cannot read the schema version"), self._engine.connect() as conn:
            return _read_version(conn)

    # -- helpers ------------------------------------------------------------------

    def _seal(self, pass_id: str, cipher_key: str | None) -> str | None:
        if cipher_key is None:
            return None
        if self._sealer is None:
            raise CatalogError(
                "a cipher key was given but no catalog key is configured: set "
                "IDPASS_ARCHIVER_CATALOG_KEY or catalog.key_file (keys are never stored "
                "in plaintext)"
            )
        return self._sealer.seal(pass_id, cipher_key)

    def _entry(self, row: Any) -> CatalogEntry:
        key = None
        if row.sealed_cipher_key is not None:
            if self._sealer is None:
                raise CatalogError(
                    f"pass {row.pass_id} has a sealed cipher key but no catalog key is configured"
                )
            key = self._sealer.open(row.pass_id, row.sealed_cipher_key)
        return CatalogEntry(
            pass_id=row.pass_id,
            state=Outcome(row.state),
            cipher_key=key,
            completed_at=row.completed_at,
            image_retention_days=row.image_retention_days,
            deadline=row.deadline,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_reason=row.last_reason,
            manifest_key=row.manifest_key,
            manifest_sha256=row.manifest_sha256,
            api_status=row.api_status,
            key_ref=row.key_ref,
            link_expires_at=row.link_expires_at,
            lease_owner=row.lease_owner,
            checks=row.checks or 0,
            confirmations=row.confirmations or 0,
            seen_slots=row.seen_slots,
        )

    # -- interface ----------------------------------------------------------------

    def upsert(self, items: Iterable[PassUpsert]) -> UpsertStats:
        """Add new passes; fill in what a source newly knows about existing ones."""
        added = updated = unchanged = 0
        now = _now()
        with catalog_errors("cannot add or update passes"), self._engine.begin() as conn:
            for item in items:
                row = conn.execute(
                    sa.select(passes).where(passes.c.pass_id == item.pass_id)
                ).first()
                if row is None:
                    conn.execute(passes.insert().values(**self._new_pass(item, now)))
                    added += 1
                    continue
                changes = self._filled_in(item, row)
                if changes:
                    changes["updated_at"] = now
                    conn.execute(
                        passes.update().where(passes.c.pass_id == item.pass_id).values(**changes)
                    )
                    updated += 1
                else:
                    unchanged += 1
        return UpsertStats(added=added, updated=updated, unchanged=unchanged)

    def _new_pass(self, item: PassUpsert, now: datetime) -> dict[str, Any]:
        """The row of a pass the catalog does not know yet."""
        return {
            "pass_id": item.pass_id,
            "state": Outcome.PENDING.value,
            "source": item.source,
            "sealed_cipher_key": self._seal(item.pass_id, item.cipher_key),
            "completed_at": item.completed_at,
            "image_retention_days": item.image_retention_days,
            "deadline": images_deadline(item.completed_at, item.image_retention_days),
            "attempts": 0,
            "key_ref": item.key_ref,
            "first_seen_at": now,
            "updated_at": now,
        }

    def _filled_in(self, item: PassUpsert, row: Any) -> dict[str, Any]:
        """What ``item`` adds to a known pass's ``row``: a key, a key reference, and the
        completion time and retention where the row has none (never overwritten)."""
        changes: dict[str, Any] = {}
        if item.cipher_key is not None and row.sealed_cipher_key is None:
            changes["sealed_cipher_key"] = self._seal(item.pass_id, item.cipher_key)
        if item.key_ref is not None and row.key_ref != item.key_ref:
            changes["key_ref"] = item.key_ref
        completed = row.completed_at or item.completed_at
        retention = (
            row.image_retention_days
            if row.image_retention_days is not None
            else item.image_retention_days
        )
        if completed != row.completed_at:
            changes["completed_at"] = completed
        if retention != row.image_retention_days:
            changes["image_retention_days"] = retention
        deadline = images_deadline(completed, retention)
        if deadline != row.deadline:
            changes["deadline"] = deadline
        if completed != row.completed_at and row.state == Outcome.NOT_READY.value:
            # the source says it completed: check it now, not after the re-check backoff
            changes["next_attempt_at"] = None
        return changes

    @staticmethod
    def _due_filter(now: datetime, scope: Scope | None = None) -> Any:
        """Work left, retry time reached, window not known to be closed, not leased;
        within ``scope`` if given (which may waive the retry time, never a lease)."""
        work_left: sa.BindParameter[str] = sa.bindparam(
            "due_states", DUE_STATES, expanding=True, literal_execute=True
        )
        conditions = [
            passes.c.state.in_(work_left),
            sa.or_(passes.c.deadline.is_(None), passes.c.deadline > now),
            sa.or_(passes.c.lease_expires_at.is_(None), passes.c.lease_expires_at <= now),
        ]
        backoff_over = sa.or_(passes.c.next_attempt_at.is_(None), passes.c.next_attempt_at <= now)
        if scope is not None and scope.waive_backoff_before is not None:
            backoff_over = sa.or_(backoff_over, passes.c.updated_at < scope.waive_backoff_before)
        conditions.append(backoff_over)
        if scope is not None:
            if scope.completed_from is not None:
                conditions.append(passes.c.completed_at >= scope.completed_from)
            if scope.completed_to is not None:
                conditions.append(passes.c.completed_at < scope.completed_to)
            if scope.pass_ids is not None:
                conditions.append(passes.c.pass_id.in_(scope.pass_ids))
        return sa.and_(*conditions)

    _DUE_ORDER = (passes.c.deadline.asc().nulls_first(), passes.c.pass_id)

    def due(self, now: datetime, limit: int, scope: Scope | None = None) -> list[CatalogEntry]:
        """Due passes, the earliest deadline first (unknown deadlines first): completed or
        not yet known to be, not archived, window not closed, retry time reached."""
        query = (
            sa.select(passes)
            .where(self._due_filter(now, scope))
            .order_by(*self._DUE_ORDER)
            .limit(limit)
        )
        return self._select(query, "cannot read the due passes")

    def count_due(self, now: datetime, scope: Scope | None = None) -> int:
        """How many passes :meth:`claim` could hand out now (within ``scope``)."""
        query = sa.select(sa.func.count()).select_from(passes).where(self._due_filter(now, scope))
        with catalog_errors("cannot count the due passes"), self._engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def claim(
        self,
        worker: str,
        now: datetime,
        limit: int,
        lease_seconds: int,
        scope: Scope | None = None,
    ) -> list[CatalogEntry]:
        """Lease up to ``limit`` due passes to ``worker``, most urgent first; only
        passes within ``scope`` when given (a backfill).

        One statement. On SQLite it is atomic (the database has one writer). On
        PostgreSQL it is the standard queue pattern: the inner ``SELECT ... FOR UPDATE
        SKIP LOCKED`` locks the chosen rows and passes over rows another worker is
        claiming right now; a row another worker claimed since this statement's
        snapshot is re-checked against the filter once its lock is free, and dropped
        (its lease is live). So two workers never claim the same pass. A lease ends
        when the outcome is recorded, or when it expires (the worker died): then the
        pass is due again for anyone.
        """
        chosen = (
            sa.select(passes.c.pass_id)
            .where(self._due_filter(now, scope))
            .order_by(*self._DUE_ORDER)
            .limit(limit)
        )
        if self.dialect == "postgresql":
            chosen = chosen.with_for_update(skip_locked=True)
        stmt = (
            passes.update()
            .where(passes.c.pass_id.in_(chosen))
            .values(
                lease_owner=worker,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now,
            )
            .returning(*passes.c)
        )
        with catalog_errors("cannot claim passes"), self._engine.begin() as conn:
            rows = conn.execute(stmt).all()
        entries = [self._entry(r) for r in rows]
        far = datetime.max.replace(tzinfo=UTC)
        entries.sort(key=lambda e: (e.deadline is not None, e.deadline or far, e.pass_id))
        return entries

    def release_all_leases(self) -> int:
        """Clear every lease: only for a process that holds the SQLite run lock, where
        any lease left is from a run that died. Returns how many were cleared."""
        with catalog_errors("cannot release leases"), self._engine.begin() as conn:
            result = conn.execute(
                passes.update()
                .where(passes.c.lease_owner.is_not(None))
                .values(lease_owner=None, lease_expires_at=None)
            )
        return int(result.rowcount or 0)

    def release(self, worker: str, pass_ids: list[str]) -> None:
        """Give back leases this worker holds but did not finish (a stopped run)."""
        with catalog_errors("cannot release leases"), self._engine.begin() as conn:
            for chunk in _chunks(pass_ids, 500):
                conn.execute(
                    passes.update()
                    .where(passes.c.pass_id.in_(chunk))
                    .where(passes.c.lease_owner == worker)
                    .values(lease_owner=None, lease_expires_at=None)
                )

    def close_overdue(self, now: datetime) -> tuple[list[str], list[str]]:
        """Settle passes whose window closed before archival, without a fetch (after
        the window the API returns no images): ``expired``, or ``no_images`` when the
        retention was 0 (deleted at completion by design). Returns both id lists."""
        base = sa.and_(
            passes.c.state.in_([s.value for s in WORK_STATES]),
            passes.c.deadline.is_not(None),
            passes.c.deadline <= now,
            sa.or_(passes.c.lease_expires_at.is_(None), passes.c.lease_expires_at <= now),
        )
        settled: dict[Outcome, list[str]] = {}
        with catalog_errors("cannot settle overdue passes"), self._engine.begin() as conn:
            for outcome, cond, reason in (
                (
                    Outcome.NO_IMAGES,
                    passes.c.image_retention_days == 0,
                    "image_retention_days is 0",
                ),
                (
                    Outcome.EXPIRED,
                    passes.c.image_retention_days > 0,
                    "retention window closed before archival",
                ),
            ):
                ids = list(
                    conn.execute(
                        sa.select(passes.c.pass_id)
                        .where(base, cond)
                        .with_for_update(skip_locked=True)
                    ).scalars()
                )
                for chunk in _chunks(ids, 500):
                    conn.execute(
                        passes.update()
                        .where(passes.c.pass_id.in_(chunk))
                        .values(
                            state=outcome.value,
                            last_reason=reason,
                            lease_owner=None,
                            lease_expires_at=None,
                            updated_at=now,
                        )
                    )
                settled[outcome] = ids
        return settled[Outcome.EXPIRED], settled[Outcome.NO_IMAGES]

    def at_risk(self, now: datetime, before: datetime, limit: int = 1000) -> list[CatalogEntry]:
        """Passes with work left whose window closes before ``before`` (the next run)."""
        query = (
            sa.select(passes)
            .where(passes.c.state.in_([s.value for s in WORK_STATES]))
            .where(passes.c.deadline.is_not(None))
            .where(passes.c.deadline > now)
            .where(passes.c.deadline <= before)
            .order_by(passes.c.deadline)
            .limit(limit)
        )
        return self._select(query, "cannot read the passes at risk")

    def get_watermark(self, source: str) -> datetime | None:
        query = sa.select(source_watermarks.c.watermark).where(source_watermarks.c.source == source)
        with catalog_errors("cannot read the watermark"), self._engine.connect() as conn:
            value: datetime | None = conn.execute(query).scalar()
        return value

    def set_watermark(self, source: str, value: datetime) -> None:
        now = _now()
        with catalog_errors("cannot store the watermark"), self._engine.begin() as conn:
            done = conn.execute(
                source_watermarks.update()
                .where(source_watermarks.c.source == source)
                .values(watermark=value, updated_at=now)
            ).rowcount
            if not done:
                conn.execute(
                    source_watermarks.insert().values(
                        source=source, watermark=value, updated_at=now
                    )
                )

    def _select(self, query: Any, operation: str) -> list[CatalogEntry]:
        with catalog_errors(operation), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [self._entry(r) for r in rows]

    def get(self, pass_id: str) -> CatalogEntry | None:
        found = self._select(
            sa.select(passes).where(passes.c.pass_id == pass_id), "cannot read a pass"
        )
        return found[0] if found else None

    def all(self) -> list[CatalogEntry]:
        return self._select(sa.select(passes).order_by(passes.c.pass_id), "cannot read the passes")

    def record(self, update: OutcomeUpdate, now: datetime) -> None:
        values: dict[str, Any] = {
            "state": update.outcome.value,
            "last_reason": update.reason,
            "next_attempt_at": update.next_attempt_at,
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        if update.link_expires_at is not None:
            values["link_expires_at"] = update.link_expires_at
        if update.outcome is Outcome.ARCHIVED:
            # another manifest than the one a run manifest listed: listed by none yet
            # (the same one, as ``catalog rebuild`` records it again: still listed)
            values["listed_run_id"] = sa.case(
                (passes.c.manifest_sha256 == update.manifest_sha256, passes.c.listed_run_id),
                else_=None,
            )
            values["archived_at"] = now
            values["image_count"] = update.image_count
            values["image_bytes"] = update.image_bytes
        if update.count_attempt:
            values["attempts"] = passes.c.attempts + 1
        if update.count_check:
            values["checks"] = sa.func.coalesce(passes.c.checks, 0) + 1
        if update.count_confirmation:
            values["confirmations"] = sa.func.coalesce(passes.c.confirmations, 0) + 1
        if update.seen_slots is not None:
            values["seen_slots"] = update.seen_slots
        for name in ("api_status", "manifest_key", "manifest_sha256"):
            value = getattr(update, name)
            if value is not None:
                values[name] = value
        if update.completed_at is not None:
            values["completed_at"] = update.completed_at
        if update.image_retention_days is not None:
            values["image_retention_days"] = update.image_retention_days
        if update.deadline is not None:
            values["deadline"] = update.deadline
        with catalog_errors("cannot record the outcome of a pass"), self._engine.begin() as conn:
            result = conn.execute(
                passes.update().where(passes.c.pass_id == update.pass_id).values(**values)
            )
        if result.rowcount != 1:
            raise CatalogError(f"pass {update.pass_id} is not in the catalog")

    def unlisted(self, before: datetime, limit: int) -> list[UnlistedPass]:
        """Archived passes no stored run manifest lists, archived before ``before`` (a
        run's start: passes committed since may be listed by the run committing them),
        at most ``limit``, in pass-id order: one read of ``ix_passes_unlisted``."""
        query = (
            sa.select(passes.c.pass_id, passes.c.manifest_key, passes.c.manifest_sha256)
            .where(
                # literals, so that the partial index's predicate provably covers them
                sa.text("state = 'archived' AND listed_run_id IS NULL"),
                passes.c.manifest_key.is_not(None),
                passes.c.manifest_sha256.is_not(None),
                sa.or_(passes.c.archived_at.is_(None), passes.c.archived_at < before),
            )
            .order_by(passes.c.pass_id)
            .limit(limit)
        )
        with catalog_errors("cannot read the unlisted passes"), self._engine.connect() as conn:
            rows = conn.execute(query).all()
        return [UnlistedPass(r.pass_id, r.manifest_key, r.manifest_sha256) for r in rows]

    def mark_listed(self, run_id: str, listed: list[tuple[str, str]]) -> int:
        """Record that ``run_id``'s run manifest, stored and chained, lists these
        (pass id, manifest SHA-256) pairs; a pass committed again since (another
        SHA-256) stays unlisted. Returns how many rows were marked."""
        marked = 0
        with catalog_errors("cannot mark passes listed"), self._engine.begin() as conn:
            for chunk in _chunks(listed, 500):
                result = conn.execute(
                    passes.update()
                    .where(
                        sa.tuple_(passes.c.pass_id, passes.c.manifest_sha256).in_(chunk),
                        passes.c.state == Outcome.ARCHIVED.value,
                    )
                    .values(listed_run_id=run_id)
                )
                marked += result.rowcount
        return marked

    def counts(self) -> Mapping[str, int]:
        query = sa.select(passes.c.state, sa.func.count()).group_by(passes.c.state)
        with catalog_errors("cannot count the passes"), self._engine.connect() as conn:
            return {state: int(n) for state, n in conn.execute(query).all()}

    def record_run(
        self,
        run_id: str,
        started_at: datetime,
        finished_at: datetime,
        exit_code: int,
        summary: Mapping[str, object],
        *,
        worker_id: str | None = None,
        manifest_key: str | None = None,
        manifest_sha256: str | None = None,
    ) -> None:
        with catalog_errors("cannot record the run"), self._engine.begin() as conn:
            conn.execute(
                runs.insert().values(
                    run_id=run_id,
                    started_at=started_at,
                    finished_at=finished_at,
                    exit_code=exit_code,
                    summary_json=json.dumps(summary, sort_keys=True, default=str),
                    worker_id=worker_id,
                    manifest_key=manifest_key,
                    manifest_sha256=manifest_sha256,
                )
            )

    def chain_move(
        self, chain_id: str, expected: tuple[str, str] | None, new: tuple[str, str]
    ) -> bool:
        """Move a run-manifest chain's head to ``new`` (key, SHA-256) if it is still
        ``expected`` (None: the chain has no head yet): a compare-and-set in one short
        transaction under the chain lock (a PostgreSQL advisory lock, or SQLite's write
        lock). Returns whether it moved; False means another run of the chain moved
        the head since the caller read it. The manifest is stored before this is
        called; nothing else happens while the lock is held.
        """
        query = sa.select(run_chain).where(run_chain.c.chain_id == chain_id)
        with (
            catalog_errors("cannot move the run chain's head"),
            self._exclusive(CHAIN_LOCK_KEY) as conn,
        ):
            row = conn.execute(query).first()
            head = (row.head_key, row.head_sha256) if row is not None else None
            if head != expected:
                return False
            values = {"head_key": new[0], "head_sha256": new[1], "updated_at": _now()}
            if row is None:
                conn.execute(run_chain.insert().values(chain_id=chain_id, **values))
            else:
                conn.execute(
                    run_chain.update().where(run_chain.c.chain_id == chain_id).values(**values)
                )
        return True

    def chain_head(self, chain_id: str) -> tuple[str, str] | None:
        """The key and SHA-256 of the chain's head, or None for a chain not begun."""
        query = sa.select(run_chain).where(run_chain.c.chain_id == chain_id)
        with catalog_errors("cannot read the run chain's head"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        return (row.head_key, row.head_sha256) if row is not None else None

    def last_run(self) -> dict[str, Any] | None:
        query = sa.select(runs).order_by(runs.c.started_at.desc()).limit(1)
        with catalog_errors("cannot read the last run"), self._engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return {
            "run_id": row.run_id,
            "started_at": row.started_at,
            "finished_at": row.finished_at,
            "exit_code": row.exit_code,
            "summary": json.loads(row.summary_json),
        }

    def close(self) -> None:
        self._engine.dispose()

    # -- compliance report ----------------------------------------------------------

    def coverage(
        self, since: datetime | None, now: datetime, *, upcoming: int = 20, failures: int = 200
    ) -> Coverage:
        """The archive's coverage for a compliance review (:class:`Coverage`), read from
        one snapshot of the database; the sealed cipher keys are never read.

        Days are UTC days: an archived pass counts on the day it was archived (passes
        archived before schema version 4 recorded that: the day of their last update),
        an expired pass on the day its window closed. ``since`` limits the days only.
        """
        archived_on = sa.func.coalesce(passes.c.archived_at, passes.c.updated_at)
        expired_on = sa.func.coalesce(passes.c.deadline, passes.c.updated_at)
        # date() is a function on SQLite and PostgreSQL alike: the UTC day of a naive
        # UTC timestamp (SQLite's text comes back as a date through the Date type).
        a_day = sa.func.date(archived_on, type_=sa.Date).label("day")
        e_day = sa.func.date(expired_on, type_=sa.Date).label("day")
        archived_q = (
            sa.select(
                a_day,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(passes.c.image_count), 0),
                sa.func.coalesce(sa.func.sum(passes.c.image_bytes), 0),
            )
            .where(passes.c.state == Outcome.ARCHIVED.value)
            .group_by(a_day)
        )
        expired_q = (
            sa.select(e_day, sa.func.count())
            .where(passes.c.state == Outcome.EXPIRED.value)
            .group_by(e_day)
        )
        if since is not None:
            archived_q = archived_q.where(archived_on >= since)
            expired_q = expired_q.where(expired_on >= since)
        upcoming_q = (
            sa.select(passes.c.pass_id, passes.c.deadline, passes.c.state)
            .where(passes.c.state.in_([s.value for s in WORK_STATES]))
            .where(passes.c.deadline.is_not(None))
            .order_by(passes.c.deadline, passes.c.pass_id)
            .limit(upcoming)
        )
        failed_q = (
            sa.select(
                passes.c.pass_id, passes.c.last_reason, passes.c.attempts, passes.c.updated_at
            )
            .where(passes.c.state == Outcome.FAILED.value)
            .order_by(passes.c.updated_at.desc(), passes.c.pass_id)
            .limit(failures)
        )
        state_q = sa.select(passes.c.state, sa.func.count()).group_by(passes.c.state)
        days: dict[Any, dict[str, int]] = {}
        with catalog_errors("cannot read the coverage"), self._snapshot() as conn:
            by_state = conn.execute(state_q).all()
            for day, n, images, size in conn.execute(archived_q):
                days.setdefault(day, {}).update(
                    archived=int(n), images=int(images), image_bytes=int(size)
                )
            for day, n in conn.execute(expired_q):
                days.setdefault(day, {})["expired"] = int(n)
            soon = conn.execute(upcoming_q).all()
            failed = conn.execute(failed_q).all()
        return Coverage(
            generated_at=now,
            since=since,
            by_state=tuple(sorted((Outcome(s), int(n)) for s, n in by_state)),
            days=tuple(DayCoverage(day=d, **days[d]) for d in sorted(days)),
            upcoming=tuple(UpcomingDeadline(r.pass_id, r.deadline, Outcome(r.state)) for r in soon),
            failures=tuple(
                FailedPass(r.pass_id, r.last_reason, r.attempts, r.updated_at) for r in failed
            ),
        )

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one state of the database throughout:
        REPEATABLE READ on PostgreSQL; on SQLite (WAL) a deferred transaction, whose
        snapshot is taken at its first read."""
        with self._engine.connect() as conn:
            if self.dialect != "sqlite":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
                with conn.begin():
                    yield conn
                return
            conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("BEGIN")
            try:
                yield conn
            finally:
                conn.exec_driver_sql("ROLLBACK")


def _read_version(conn: Connection) -> int:
    """The catalog's schema version; 0 for an empty database."""
    if not sa.inspect(conn).has_table(schema_version.name):
        return 0
    return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)


def _refuse_newer(current: int) -> None:
    if current > SCHEMA_VERSION:
        raise CatalogError(
            f"the catalog has schema version {current}, newer than this archiver "
            f"understands ({SCHEMA_VERSION}); upgrade the archiver"
        )


def _make_parent_dir(url: sa.URL) -> None:
    """Create the directory of a SQLite database file (not for memory databases)."""
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    directory = Path(database).expanduser().parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the directory should be
        raise CatalogError(f"the catalog's directory {directory} is not a directory") from None
    except OSError as exc:  # a read-only parent, a file further up
        raise CatalogError(
            f"cannot create the catalog's directory {directory} "
            f"({exc.strerror or type(exc).__name__})"
        ) from None


_T = TypeVar("_T")


def _chunks(items: list[_T], size: int) -> Iterable[list[_T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # The busy timeout first: switching a new file to WAL needs a lock that another
    # process opening the same catalog may hold for a moment.
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()
