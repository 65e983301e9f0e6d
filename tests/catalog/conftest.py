"""Catalog fixtures: every catalog test runs on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from archiver.catalog.keys import KeySealer, new_catalog_secret
from archiver.catalog.sql import SqlCatalog


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for an empty catalog database: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'c.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[SqlCatalog]:
    cat = SqlCatalog(catalog_url, sealer=KeySealer(new_catalog_secret()))
    yield cat
    cat.close()
