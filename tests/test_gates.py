"""The code gates run inside the suite, so the README's one test command runs them all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_ruff_lint_is_clean():
    """ruff finds nothing in archiver/ and tests/."""
    proc = _run("ruff", "check", "archiver", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_applied():
    """The code is formatted as ruff formats it."""
    proc = _run("ruff", "format", "--check", "archiver", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_on_archiver():
    """mypy --strict passes on the archiver package."""
    proc = _run("mypy", "--no-incremental", "--cache-dir", "/dev/null")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_no_function_is_rated_d_or_worse_by_radon():
    """radon's cyclomatic complexity: every function in archiver/ is rank C or better
    (D starts at 21 branches: too many paths to read or test)."""
    proc = _run("radon", "cc", "--min", "D", "--show-complexity", "archiver")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", "split these functions:\n" + proc.stdout
