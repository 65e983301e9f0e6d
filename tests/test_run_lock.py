"""The SQLite run lock beside the catalog, when it cannot be created: a catalog error
(exit 3) that names the directory, not an internal error. Real failures for every
user, root included (root writes through a read-only mode, so the tests put a file
where a directory should be, or a directory where the lock file should be)."""

from __future__ import annotations

from pathlib import Path

import pytest

from archiver.results import EXIT_SYSTEMIC
from tests.fixtures.cli import run_cli


def _config(tmp_path: Path, database: Path) -> Path:
    cfg = tmp_path / "archiver.toml"
    cfg.write_text(
        f"""[api]
base_url = "http://127.0.0.1:9"
[storage]
bucket = "archive-bucket"
kms_key_id = "archive-key"
[catalog]
url = "sqlite:///{database}"
"""
    )
    return cfg


def _one_catalog_error(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("idpass-archiver: catalog_error: "), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("command", ["run", "status"])
def test_a_catalog_directory_that_is_a_file_is_a_catalog_error_naming_it(
    tmp_path: Path, command: str
) -> None:
    """The catalog's directory is a regular file: ``run`` cannot create its lock there,
    ``status`` cannot create the directory; each says so, naming the directory."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the catalog's directory should be\n")
    proc = run_cli(
        [
            "status" if command == "status" else "run",
            "--config",
            str(_config(tmp_path, blocker / "catalog.db")),
        ]
    )
    assert proc.returncode == EXIT_SYSTEMIC
    line = _one_catalog_error(proc.stderr)
    assert str(blocker) in line
    assert "a file where" not in line  # the name, never the content
    what = "run lock" if command == "run" else "catalog's directory"
    assert what in line


def test_a_run_lock_that_cannot_be_opened_is_a_catalog_error_naming_the_directory(
    tmp_path: Path,
) -> None:
    """Something that is not a file stands where the lock file goes (here a directory):
    opening the lock fails, and ``run`` says so, naming the catalog's directory."""
    (tmp_path / "catalog.db.lock").mkdir()
    proc = run_cli(["run", "--config", str(_config(tmp_path, tmp_path / "catalog.db"))])
    assert proc.returncode == EXIT_SYSTEMIC
    line = _one_catalog_error(proc.stderr)
    assert f"run lock catalog.db.lock in the catalog's directory {tmp_path} " in line
