"""The code gates run inside the suite, so the README's one test command runs them all."""

from __future__ import annotations

import subprocess
import sys
import zipfile
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


def test_the_wheel_carries_the_package_files_and_building_it_writes_nothing_beside_the_sources(
    tmp_path: Path,
):
    """pip builds the wheel from a copy of the tracked files: the wheel holds every file
    of archiver/ (py.typed, demo.toml, the schemas, FORMAT.md), and the copy's top level
    is the same afterwards (no build/ or *.egg-info: the repository's top level is fixed)."""
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    src = tmp_path / "src"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes((ROOT / name).read_bytes())
    before = sorted(p.name for p in src.iterdir())
    out = tmp_path / "wheel"
    proc = _run("pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in src.iterdir()) == before
    [wheel] = out.glob("idpass_archiver-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n for n in zf.namelist() if n.startswith("archiver/")}
    package = {n for n in tracked if n.startswith("archiver/")}
    assert package - shipped == set()
    assert {"archiver/py.typed", "archiver/demo.toml", "archiver/schemas/FORMAT.md"} <= shipped
