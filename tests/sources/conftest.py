"""A real SQLite "KYC" database, written with the stdlib driver, for the sql source tests."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

QUERY = (
    "SELECT id, cipher_key, completed_at, retention AS image_retention_days, updated_at "
    "FROM kyc_passes WHERE updated_at > :watermark ORDER BY updated_at"
)
KEY_QUERY = "SELECT cipher_key FROM kyc_passes WHERE id = :id"


def sql_time(ts: datetime) -> str:
    """How the KYC system stores times: naive UTC text, as SQLite commonly holds them."""
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


class KycDb:
    """The customer's KYC table: ``kyc_passes(id, cipher_key, completed_at, retention,
    updated_at)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.execute(
            "CREATE TABLE kyc_passes (id TEXT PRIMARY KEY, cipher_key TEXT, "
            "completed_at TEXT, retention INTEGER, updated_at TEXT)"
        )

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path}"

    def put(
        self,
        pass_id: str,
        *,
        updated_at: datetime | str,
        key: str | None = None,
        completed_at: datetime | str | None = None,
        retention: int | str | None = None,
    ) -> None:
        """Insert or replace one row (committed when this returns)."""
        row = (
            pass_id,
            key,
            sql_time(completed_at) if isinstance(completed_at, datetime) else completed_at,
            retention,
            sql_time(updated_at) if isinstance(updated_at, datetime) else updated_at,
        )
        self.execute("INSERT OR REPLACE INTO kyc_passes VALUES (?, ?, ?, ?, ?)", row)

    def execute(self, statement: str, params: tuple[object, ...] = ()) -> None:
        """Run one statement in its own committed transaction."""
        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.execute(statement, params)
        finally:
            conn.close()


@pytest.fixture
def kyc(tmp_path: Path) -> KycDb:
    return KycDb(tmp_path / "kyc.db")
