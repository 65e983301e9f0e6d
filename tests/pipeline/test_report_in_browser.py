"""The HTML coverage report of real archival cycles, opened in a real browser.

Days of archiving and expiry are made with the sandbox's and the archiver's clocks moved
together; the CLI writes the report; headless Chromium (Debian's ``chromium``, which
``.ci/run`` installs) renders it, dumps its DOM and takes a screenshot.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image

from archiver.catalog import Outcome, PassUpsert
from tests.fixtures.cli import run_cli
from tests.helpers import ReportPage

pytestmark = pytest.mark.integration

# Nothing but the file: no network, no profile state, no GPU; root in a container.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
ARCHIVED_RGB = (0x2E, 0x7D, 0x32)
EXPIRED_RGB = (0xC6, 0x28, 0x28)


@pytest.fixture(scope="session")
def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed; .ci/run installs it, or run "
            "`apt-get update && apt-get install -y chromium`"
        )
    return path


def _browse(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _archived(summary) -> list:
    return [r for r in summary.results if r.outcome is Outcome.ARCHIVED]


def test_html_report_of_real_runs_renders_the_catalog_in_chromium(
    travel, tmp_path, chromium, pii_watch
):
    """Passes archived on day 0 and day 3, expired on day 1 and failed: the report the
    CLI writes, rendered by Chromium, shows the catalog's totals, one chart group per
    day from day 0 to day 3, and each day's passes, images and bytes."""
    day0 = travel.clock.now()
    travel.seed(2, image_retention_days=10)
    travel.import_ledger()
    first = travel.run()
    closing = [p["id"] for p in travel.seed(2, image_retention_days=1)]
    later = travel.seed(image_retention_days=5)[0]["id"]
    last = travel.seed(image_retention_days=30)[0]["id"]
    travel.import_ledger()
    ghost = str(uuid.uuid4())  # the API does not know it: failed
    travel.catalog.upsert([PassUpsert(ghost, "test")])

    travel.advance(timedelta(days=1, seconds=1))  # the two windows of 1 day closed
    second = travel.run(limit=1)  # unknown deadlines go first: the ghost
    travel.advance(timedelta(days=2))
    third = travel.run(limit=1)
    assert len(_archived(first)) == 2 and [r.pass_id for r in _archived(third)] == [later]
    expired = sorted(r.pass_id for r in second.results if r.outcome is Outcome.EXPIRED)
    assert expired == sorted(closing)
    counts = travel.catalog.counts()
    assert counts == {"archived": 3, "expired": 2, "failed": 1, "pending": 1}

    cfg = tmp_path / "report.toml"
    cfg.write_text(
        '[api]\nbase_url = "http://127.0.0.1:9"\n'
        '[storage]\nbucket = "report-test"\nsse = "AES256"\n'
        f'[catalog]\nurl = "sqlite:///{tmp_path / "catalog.db"}"\n'
    )
    report = tmp_path / "coverage.html"
    args = ["--format", "html", "--since", day0.date().isoformat(), "--output", str(report)]
    proc = run_cli(["report", "--config", str(cfg), *args], watch=pii_watch)
    assert proc.returncode == 0, proc.stderr
    pii_watch.output(f"{tmp_path.name}/coverage.html", report.read_text(encoding="utf-8"))

    dom = _browse(chromium, tmp_path, "--dump-dom", report.as_uri()).stdout
    page = ReportPage(dom)
    assert page.value("total-known") == sum(counts.values()) == 7
    assert [page.value(f"total-{s}") for s in ("archived", "expired", "failed", "work-left")] == [
        counts["archived"],
        counts["expired"],
        counts["failed"],
        counts["pending"],
    ]
    days = [(day0 + timedelta(days=n)).date().isoformat() for n in range(4)]
    groups = page.find("g", "day")
    assert [(g["data-day"], g["data-archived"], g["data-expired"]) for g in groups] == [
        (days[0], "2", "0"),
        (days[1], "0", "2"),
        (days[2], "0", "0"),
        (days[3], "1", "0"),
    ]
    rows = {r["data-day"]: r for r in page.find("tr") if "data-day" in r}
    assert sorted(rows) == [days[0], days[1], days[3]]
    for day, summary in ((days[0], first), (days[3], third)):
        assert int(rows[day]["data-images"]) == sum(r.images for r in _archived(summary)) > 0
        assert int(rows[day]["data-bytes"]) == sum(r.image_bytes for r in _archived(summary))
    assert page.value("period-bytes") == sum(
        r.image_bytes for s in (first, third) for r in _archived(s)
    )
    [upcoming] = [r["data-pass"] for r in page.find("tr") if r.get("data-pass") == last]
    assert upcoming == last and page.by_id("upcoming")["data-rows"] == "1"
    assert [r["data-pass"] for r in page.find("tr") if r.get("data-pass") == ghost] == [ghost]
    assert "api_not_found" in page.text

    shot = tmp_path / "coverage.png"
    _browse(chromium, tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", report.as_uri())
    with Image.open(shot) as img:
        assert img.size == (1280, 1600)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20) or []
    pixels = {rgb: n for n, rgb in colours}
    # Solid bars, not just the legend's swatches (about 170 pixels each).
    assert pixels.get(ARCHIVED_RGB, 0) > 2000 and pixels.get(EXPIRED_RGB, 0) > 2000
