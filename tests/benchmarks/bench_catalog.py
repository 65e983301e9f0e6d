"""Catalog selection benchmark: the next batch of due passes out of 1,000,000.

Run (not part of the test suite; takes a few minutes and ~1 GB of temp disk)::

    .venv/bin/python -m tests.benchmarks.bench_catalog
    .venv/bin/python -m tests.benchmarks.bench_catalog --rows 200000 --backend sqlite

For each backend (SQLite in a temp file; PostgreSQL started with ``pgserver`` in a
temp dir) it creates a catalog with :class:`SqlCatalog`, bulk-loads ``--rows`` passes
with a realistic mix of states (about 90 % archived, 6 % due with deadlines spread
over the next 60 days or unknown, the rest waiting to retry, not ready or settled),
and times ``due(limit=500)`` and ``claim(limit=500)`` (each claim is released again,
untimed) and due()'s SQL alone (``due SQL``: database and driver, no catalog entries
built), median and p95 over ``--repeat`` runs, on three copies of the same data:

* ``current``: the schema as migrations build it (``ix_passes_due``, the partial
  due-order index of migration 3, and ``ix_passes_state_deadline``);
* ``v2``: without ``ix_passes_due`` (the schema before migration 3);
* ``none``: without either index: the same-run baseline every ratio is against.

``EXPLAIN`` of both statements on each copy shows which index the database uses.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from archiver.catalog.sql import SqlCatalog

LIMIT = 500
DUE_INDEX = "ix_passes_due"
STATE_INDEX = "ix_passes_state_deadline"
# (label, indexes dropped from the copy)
VARIANTS = (("current", ()), ("v2", (DUE_INDEX,)), ("none", (DUE_INDEX, STATE_INDEX)))
NOW = datetime.now(UTC).replace(microsecond=0)
COLUMNS = (
    "pass_id",
    "state",
    "source",
    "completed_at",
    "image_retention_days",
    "deadline",
    "attempts",
    "next_attempt_at",
    "first_seen_at",
    "updated_at",
)
# (cumulative share, state, kind): see _row
MIX = (
    (0.900, "archived", "past"),
    (0.950, "pending", "due"),
    (0.955, "pending", "unknown"),
    (0.970, "retry", "backoff"),
    (0.975, "retry", "due"),
    (0.985, "not_ready", "backoff"),
    (0.993, "expired", "past"),
    (0.997, "no_images", "past"),
    (0.999, "skipped", "past"),
    (1.000, "failed", "past"),
)
RETENTIONS = (7, 14, 30, 90, 365)


# -- data -------------------------------------------------------------------------------


def _row(rng: random.Random, now: datetime) -> tuple[Any, ...]:
    """One pass as naive-UTC column values in COLUMNS order."""
    r = rng.random()
    state, kind = next((s, k) for share, s, k in MIX if r < share)
    pid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    retention: int | None = rng.choice(RETENTIONS)
    completed: datetime | None
    next_at = None
    if kind == "past":  # settled: completed any time in the last two years
        completed = now - timedelta(seconds=rng.uniform(3600, 2 * 365 * 86400))
    elif kind == "unknown":  # known only by id so far
        completed, retention = None, None
    else:  # work left: the window closes between 1 hour and 60 days from now
        assert retention is not None
        deadline = now + timedelta(seconds=rng.uniform(3600, 60 * 86400))
        completed = deadline - timedelta(days=retention)
        if kind == "backoff":
            next_at = now + timedelta(seconds=rng.uniform(300, 6 * 3600))
        elif state == "retry":
            next_at = now - timedelta(seconds=rng.uniform(1, 3600))
    if state == "not_ready":
        completed, retention = None, None
    deadline_at = (
        completed + timedelta(days=retention)
        if completed is not None and retention is not None
        else None
    )
    naive = now.replace(tzinfo=None)
    return (
        pid,
        state,
        "bench",
        completed.replace(tzinfo=None) if completed else None,
        retention,
        deadline_at.replace(tzinfo=None) if deadline_at else None,
        0 if state == "pending" else rng.randint(1, 4),
        next_at.replace(tzinfo=None) if next_at else None,
        naive,
        naive,
    )


def rows(n: int, seed: int = 20260601) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(seed)
    for _ in range(n):
        yield _row(rng, NOW)


def _batches(it: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in it:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_sqlite(engine: sa.Engine, n: int) -> None:
    """executemany in 100k-row transactions; datetimes stored as SQLAlchemy stores them."""
    to_text = sa.DateTime().dialect_impl(engine.dialect).bind_processor(engine.dialect)
    assert to_text is not None
    times = [COLUMNS.index(c) for c in ("completed_at", "deadline", "next_attempt_at")]
    times += [COLUMNS.index("first_seen_at"), COLUMNS.index("updated_at")]
    sql = f"INSERT INTO passes ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    for batch in _batches(rows(n), 100_000):
        converted = []
        for row in batch:
            values = list(row)
            for i in times:
                values[i] = to_text(values[i]) if values[i] is not None else None
            converted.append(tuple(values))
        with engine.begin() as conn:
            conn.exec_driver_sql(sql, converted)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def load_postgres(engine: sa.Engine, n: int) -> None:
    """COPY ... FROM STDIN through psycopg, then ANALYZE."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        copy_sql = f"COPY passes ({', '.join(COLUMNS)}) FROM STDIN"
        with conn.cursor() as cur, cur.copy(copy_sql) as copy:
            for row in rows(n):
                copy.write_row(row)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE passes")
        conn.autocommit = False
    finally:
        raw.close()


# -- measuring ----------------------------------------------------------------------------


@dataclass
class Timing:
    backend: str
    operation: str
    variant: str
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(backend: str, catalog: SqlCatalog, variant: str, repeat: int) -> list[Timing]:
    """due() and claim() as the pipeline calls them, and due()'s SQL alone (the database
    and driver, without building catalog entries)."""
    with _captured(catalog._engine) as seen:
        for _ in range(3):  # warm the caches
            catalog.due(NOW, LIMIT)
    sql, params = seen[-1]
    query = Timing(backend, "due SQL", variant, [])
    with catalog._engine.connect() as conn:
        for _ in range(repeat):
            seconds, got = _timed(lambda: conn.exec_driver_sql(sql, params).all())
            assert len(got) == LIMIT
            query.samples.append(seconds)
        conn.rollback()
    due = Timing(backend, f"due({LIMIT})", variant, [])
    claim = Timing(backend, f"claim({LIMIT})", variant, [])
    for _ in range(repeat):
        seconds, got = _timed(lambda: catalog.due(NOW, LIMIT))
        assert len(got) == LIMIT, f"only {len(got)} passes due: the data mix is wrong"
        due.samples.append(seconds)
        seconds, got = _timed(lambda: catalog.claim("bench", NOW, LIMIT, 600))
        assert len(got) == LIMIT
        claim.samples.append(seconds)
        catalog.release("bench", [e.pass_id for e in got])
    return [query, due, claim]


@contextmanager
def _captured(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """The SQL and driver parameters of the statements executed meanwhile."""
    seen: list[tuple[str, Any]] = []

    def before(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        seen.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)


def explain(catalog: SqlCatalog) -> dict[str, list[str]]:
    """The query plans of due() and of claim()'s UPDATE, as the database reports them."""
    engine = catalog._engine
    prefix = "EXPLAIN QUERY PLAN " if catalog.dialect == "sqlite" else "EXPLAIN "
    plans: dict[str, list[str]] = {}
    with _captured(engine) as seen:
        catalog.due(NOW, LIMIT)
    plans[f"due({LIMIT})"] = _plan(engine, prefix, seen[-1])
    with _captured(engine) as seen:
        got = catalog.claim("bench", NOW, LIMIT, 600)
    catalog.release("bench", [e.pass_id for e in got])
    update = next(s for s in seen if s[0].lstrip().upper().startswith("UPDATE"))
    plans[f"claim({LIMIT})"] = _plan(engine, prefix, update)
    return plans


def _plan(engine: sa.Engine, prefix: str, statement: tuple[str, Any]) -> list[str]:
    sql, params = statement
    with engine.connect() as conn:
        result = conn.exec_driver_sql(prefix + sql, params).all()
        conn.rollback()
    return [str(row[-1]) for row in result]


# -- backends ----------------------------------------------------------------------------


@dataclass
class Result:
    timings: list[Timing]
    plans: dict[str, dict[str, list[str]]]  # variant -> statement -> plan lines
    load_seconds: float
    due_rows: int


def _bench_variant(backend: str, url: str, variant: str, repeat: int, result: Result) -> None:
    catalog = SqlCatalog(url)
    try:
        result.plans[variant] = explain(catalog)
        result.timings += measure(backend, catalog, variant, repeat)
    finally:
        catalog.close()


def run_sqlite(n: int, repeat: int, workdir: Path) -> Result:
    path = workdir / "catalog.db"
    catalog = SqlCatalog(f"sqlite:///{path}")
    load, _ = _timed(lambda: load_sqlite(catalog._engine, n))
    result = Result([], {}, load, catalog.count_due(NOW))
    catalog.close()
    for variant, drop in VARIANTS:
        copy = workdir / f"catalog-{variant}.db"
        shutil.copyfile(path, copy)
        engine = sa.create_engine(f"sqlite:///{copy}")
        with engine.begin() as conn:
            for index in drop:
                conn.exec_driver_sql(f"DROP INDEX {index}")
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
        _bench_variant("sqlite", f"sqlite:///{copy}", variant, repeat, result)
        copy.unlink()
    return result


def run_postgres(n: int, repeat: int) -> Result:
    from tests.fixtures.postgres import running_postgres

    with running_postgres() as server:
        name = server.create_database()
        catalog = SqlCatalog(server.url(name))
        load, _ = _timed(lambda: load_postgres(catalog._engine, n))
        result = Result([], {}, load, catalog.count_due(NOW))
        catalog.close()
        for variant, drop in VARIANTS:
            copy = f"{name}_{variant}"
            with server.connect() as admin:
                admin.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{name}"')
            engine = sa.create_engine(server.url(copy))
            with engine.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT")
                for index in drop:
                    conn.exec_driver_sql(f"DROP INDEX {index}")
                conn.exec_driver_sql("VACUUM ANALYZE passes")
            engine.dispose()
            _bench_variant("postgresql", server.url(copy), variant, repeat, result)
            server.drop_database(copy)
    return result


# -- report ------------------------------------------------------------------------------


def _uses(plan: list[str]) -> str:
    used = [ix for ix in (DUE_INDEX, STATE_INDEX) if any(ix in line for line in plan)]
    return ", ".join(used) or "no index"


def report(results: dict[str, Result], n: int, repeat: int) -> str:
    lines = [
        f"catalog selection benchmark: {n:,} passes, limit {LIMIT}, median and p95 of "
        f"{repeat} runs",
        "indexes: current = ix_passes_due + ix_passes_state_deadline; "
        "v2 = ix_passes_state_deadline only; none = baseline",
        "",
        f"{'backend':<11} {'operation':<11} {'indexes':<8} {'median ms':>10} {'p95 ms':>9}"
        f" {'vs none':>9}  plan uses",
    ]
    for backend, result in results.items():
        base = {t.operation: t for t in result.timings if t.variant == "none"}
        for t in sorted(result.timings, key=lambda t: t.operation):
            ratio = f"{base[t.operation].median / t.median:.1f}x"
            statement = f"due({LIMIT})" if t.operation == "due SQL" else t.operation
            uses = _uses(result.plans[t.variant][statement])
            lines.append(
                f"{backend:<11} {t.operation:<11} {t.variant:<8} {t.median * 1000:>10.1f}"
                f" {t.p95 * 1000:>9.1f} {ratio:>9}  {uses}"
            )
    for backend, result in results.items():
        lines += [
            "",
            f"{backend}: loaded in {result.load_seconds:.1f}s; {result.due_rows:,} passes due",
        ]
        for variant, plans in result.plans.items():
            for what, plan in plans.items():
                lines.append(f"  EXPLAIN {what} [{variant}]:")
                lines += [f"    {line}" for line in plan]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql"], action="append", help="default: both"
    )
    args = parser.parse_args(argv)
    results: dict[str, Result] = {}
    for backend in args.backend or ["sqlite", "postgresql"]:
        print(f"{backend}: loading {args.rows:,} passes...", file=sys.stderr, flush=True)
        if backend == "sqlite":
            with tempfile.TemporaryDirectory(prefix="idpass-bench-") as tmp:
                results[backend] = run_sqlite(args.rows, args.repeat, Path(tmp))
        else:
            results[backend] = run_postgres(args.rows, args.repeat)
    print(report(results, args.rows, args.repeat))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
