"""The compliance report: the renderers over a hand-made Coverage, and the CLI command."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from archiver.catalog import Outcome, OutcomeUpdate, PassUpsert
from archiver.catalog.coverage import Coverage, DayCoverage, FailedPass, UpcomingDeadline
from archiver.catalog.sql import SqlCatalog
from archiver.report import FORMAT, _ticks, render_html, render_json, render_table, to_json
from tests.fixtures.cli import run_cli
from tests.helpers import ReportPage

PID1 = "11111111-0000-4000-8000-000000000001"
PID2 = "22222222-0000-4000-8000-000000000002"
PID3 = "33333333-0000-4000-8000-000000000003"
HOSTILE = '"><script>alert(1)</script><b>bold</b> & more'

COVERAGE = Coverage(
    generated_at=datetime(2026, 6, 10, 12, tzinfo=UTC),
    since=datetime(2026, 6, 1, tzinfo=UTC),
    by_state=(
        (Outcome.ARCHIVED, 3),
        (Outcome.EXPIRED, 2),
        (Outcome.FAILED, 1),
        (Outcome.PENDING, 2),
        (Outcome.RETRY, 1),
        (Outcome.SKIPPED, 1),
    ),
    days=(
        DayCoverage(date(2026, 6, 2), archived=2, images=5, image_bytes=2_500_000),
        DayCoverage(date(2026, 6, 5), archived=1, images=1, image_bytes=300_000, expired=2),
    ),
    upcoming=(
        UpcomingDeadline(PID1, datetime(2026, 6, 9, tzinfo=UTC), Outcome.RETRY),
        UpcomingDeadline(PID2, datetime(2026, 6, 12, 18, tzinfo=UTC), Outcome.PENDING),
    ),
    failures=(FailedPass(PID3, HOSTILE, 2, datetime(2026, 6, 8, 9, 30, tzinfo=UTC)),),
)
EMPTY = Coverage(generated_at=COVERAGE.generated_at, since=None, by_state=())


# -- JSON -------------------------------------------------------------------------------


def test_json_has_stable_keys_and_utc_timestamps():
    """The JSON names its format and version, has the same keys every time, sorted, and
    ISO 8601 UTC timestamps ('Z') whatever zone the coverage was made in."""
    doc = json.loads(render_json(COVERAGE))
    assert (doc["format"], doc["version"]) == (FORMAT, 1)
    assert list(doc) == sorted(doc)
    assert set(doc) == {
        "days",
        "failures",
        "format",
        "generated_at",
        "period",
        "since",
        "totals",
        "upcoming_deadlines",
        "version",
    }
    assert (doc["generated_at"], doc["since"]) == ("2026-06-10T12:00:00Z", "2026-06-01T00:00:00Z")
    assert doc["totals"] == {
        "known": 10,
        "archived": 3,
        "expired": 2,
        "failed": 1,
        "work_left": 3,
        "no_images": 0,
        "images_absent": 0,
        "skipped": 1,
        "by_state": {s.value: dict(COVERAGE.by_state).get(s, 0) for s in Outcome},
    }
    assert doc["period"] == {"archived": 3, "expired": 2, "images": 6, "image_bytes": 2_800_000}
    assert doc["days"][1] == {
        "day": "2026-06-05",
        "archived": 1,
        "images": 1,
        "image_bytes": 300_000,
        "expired": 2,
    }
    assert doc["upcoming_deadlines"][0] == {
        "pass_id": PID1,
        "deadline": "2026-06-09T00:00:00Z",
        "state": "retry",
    }
    assert doc["failures"] == [
        {"pass_id": PID3, "reason": HOSTILE, "attempts": 2, "failed_at": "2026-06-08T09:30:00Z"}
    ]
    plus5 = timezone(timedelta(hours=5))
    shifted = Coverage(
        generated_at=COVERAGE.generated_at.astimezone(plus5), since=None, by_state=()
    )
    assert to_json(shifted)["generated_at"] == "2026-06-10T12:00:00Z"
    assert render_json(COVERAGE) == render_json(COVERAGE)


def test_empty_json_lists_every_state_at_zero():
    """With nothing in the catalog every state is still listed, at zero."""
    doc = to_json(EMPTY)
    assert doc["totals"]["by_state"] == {s.value: 0 for s in Outcome}
    assert (doc["since"], doc["days"], doc["upcoming_deadlines"], doc["failures"]) == (
        None,
        [],
        [],
        [],
    )


# -- text -------------------------------------------------------------------------------


def test_table_shows_totals_days_deadlines_and_failures():
    """The text report has the totals, a row per day with MB, the deadlines with the
    time left, and the failures on one line each."""
    out = render_table(COVERAGE)
    assert "Known                            10" in out
    assert "Expired without archiving         2" in out
    assert "Per day (UTC), the days since 2026-06-01" in out
    assert "2026-06-02           2         5        2.50         0" in out
    assert "total                3         6        2.80         2" in out
    assert f"{PID1}  2026-06-09 00:00 UTC  retry      overdue" in out
    assert f"{PID2}  2026-06-12 18:00 UTC  pending    2 d 6 h" in out
    assert f"{PID3}  2026-06-08 09:30 UTC  attempts 2  {HOSTILE}" in out


def test_empty_table_says_so():
    """An empty catalog gives a short, explicit text report."""
    out = render_table(EMPTY)
    assert "all days with activity" in out and "no passes archived or expired" in out
    assert out.count("  none") == 2


# -- HTML -------------------------------------------------------------------------------


def test_html_key_numbers_have_stable_ids():
    """Totals and period sums carry ids and data-value attributes a script can read."""
    page = ReportPage(render_html(COVERAGE))
    totals = {
        k: page.value(f"total-{k}")
        for k in ("known", "archived", "expired", "failed", "work-left", "no-images", "skipped")
    }
    assert totals == {
        "known": 10,
        "archived": 3,
        "expired": 2,
        "failed": 1,
        "work-left": 3,
        "no-images": 0,
        "skipped": 1,
    }
    assert [page.value(f"period-{k}") for k in ("archived", "expired", "images", "bytes")] == [
        3,
        2,
        6,
        2_800_000,
    ]
    assert page.by_id("generated-at")["data-value"] == "2026-06-10T12:00:00Z"
    assert page.by_id("period")["data-since"] == "2026-06-01T00:00:00Z"
    rows = [(r["data-day"], r["data-archived"], r["data-expired"]) for r in page.find("tr")[1:3]]
    assert rows == [("2026-06-02", "2", "0"), ("2026-06-05", "1", "2")]
    assert "2.50" in page.text and "2.80" in page.text  # MB


def test_html_chart_has_one_bar_group_per_calendar_day():
    """The chart's x axis is time: one group per UTC day from --since to the last day
    with activity, empty days included, with one bar per non-zero count."""
    page = ReportPage(render_html(COVERAGE))
    groups = page.find("g", "day")
    assert [g["data-day"] for g in groups] == [f"2026-06-0{d}" for d in range(1, 6)]
    assert [(g["data-archived"], g["data-expired"]) for g in groups] == [
        ("0", "0"),
        ("2", "0"),
        ("0", "0"),
        ("0", "0"),
        ("1", "2"),
    ]
    assert page.by_id("chart")["data-days"] == "5"
    assert len(page.find("rect", "archived")) == 2 and len(page.find("rect", "expired")) == 1
    heights = {float(r["height"]) for r in page.find("rect", "bar")}
    assert len(heights) == 2  # bars of 1 and 2 passes


def test_html_chart_scales_to_a_long_period():
    """A year of days stays one group per day, with thinned date labels."""
    days = tuple(DayCoverage(date(2025, 1, 1) + timedelta(days=i), archived=i) for i in range(365))
    page = ReportPage(render_html(Coverage(COVERAGE.generated_at, None, (), days=days)))
    assert len(page.find("g", "day")) == 365
    labels = [t for t in page.find("text") if t.get("text-anchor") == "middle"]
    assert 5 < len(labels) < 40
    assert float(page.by_id("chart")["width"]) < 365 * 8


def test_html_is_self_contained():
    """No scripts, no external URL of any kind, and a policy that forbids loading any."""
    text = render_html(COVERAGE)
    for banned in ("://", "<script", "src=", "href=", "url(", "@import"):
        assert banned not in text
    page = ReportPage(text)
    [csp] = [a for t, a in page.elements if t == "meta" and "http-equiv" in a]
    assert csp["content"].startswith("default-src 'none'")
    assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text


def test_html_escapes_what_it_shows():
    """A reason with markup in it is shown as text, never parsed as markup."""
    page = ReportPage(render_html(COVERAGE))
    assert not page.find("script") and not page.find("b")
    assert HOSTILE in page.text


def test_html_marks_overdue_deadlines():
    """A work-left pass past its deadline is flagged overdue; the others show time left."""
    page = ReportPage(render_html(COVERAGE))
    assert page.by_id("upcoming")["data-rows"] == "2"
    assert [r["data-pass"] for r in page.find("tr") if "data-pass" in r] == [PID1, PID2, PID3]
    assert len(page.find("td", "overdue")) == 1
    assert "2 d 6 h" in page.text


def test_empty_html_renders():
    """An empty catalog renders a page with zero totals and no chart."""
    page = ReportPage(render_html(EMPTY))
    assert page.value("total-known") == 0
    assert page.by_id("chart-empty") and not page.find("svg")
    assert page.by_id("days")["data-rows"] == "0" and page.by_id("failures")["data-rows"] == "0"


@pytest.mark.parametrize(
    ("top", "ticks"),
    [
        (1, [0, 1]),
        (5, [0, 1, 2, 3, 4, 5]),
        (7, [0, 2, 4, 6, 8]),
        (230, [0, 50, 100, 150, 200, 250]),
    ],
)
def test_chart_ticks_are_round(top, ticks):
    """The y axis has at most six round ticks from 0 covering the highest bar."""
    assert _ticks(top) == ticks


# -- CLI --------------------------------------------------------------------------------


@pytest.fixture
def report_config(tmp_path):
    """A config whose catalog holds a few passes; the report needs no API or S3."""
    db = tmp_path / "catalog.db"
    cfg = tmp_path / "archiver.toml"
    cfg.write_text(
        '[api]\nbase_url = "http://127.0.0.1:9"\n'
        '[storage]\nbucket = "report-test"\nsse = "AES256"\n'
        f'[catalog]\nurl = "sqlite:///{db}"\n'
    )
    cat = SqlCatalog(f"sqlite:///{db}")
    try:
        t0 = datetime(2026, 6, 1, 23, 30, tzinfo=UTC)
        cat.upsert(
            [PassUpsert(p, "t", completed_at=t0, image_retention_days=30) for p in (PID1, PID2)]
        )
        for pid, at in ((PID1, t0), (PID2, t0 + timedelta(hours=1))):
            cat.record(OutcomeUpdate(pid, Outcome.ARCHIVED, image_count=2, image_bytes=10), at)
    finally:
        cat.close()
    return cfg


def test_report_command_prints_json_filtered_by_since(report_config):
    """report --format json prints only the JSON on stdout (logs go to stderr), with the
    days from --since on and the totals of the whole catalog; exit 0."""
    base = ["report", "--config", str(report_config), "--format", "json"]
    proc = run_cli(base)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [d["day"] for d in doc["days"]] == ["2026-06-01", "2026-06-02"]
    assert "report_written" in proc.stderr
    since = json.loads(run_cli([*base, "--since", "2026-06-02"]).stdout)
    assert [d["day"] for d in since["days"]] == ["2026-06-02"]
    assert since["since"] == "2026-06-02T00:00:00Z" and since["totals"]["archived"] == 2


def test_report_command_writes_html_and_table(report_config, tmp_path):
    """--output writes the file (nothing else on stdout); the default format is the table."""
    out = tmp_path / "coverage.html"
    proc = run_cli(
        ["report", "--config", str(report_config), "--format", "html", "--output", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    assert ReportPage(out.read_text(encoding="utf-8")).value("total-archived") == 2
    assert "<html" not in proc.stdout
    table = run_cli(["report", "--config", str(report_config)])
    assert table.returncode == 0 and "Archived                          2" in table.stdout


def test_report_command_usage_errors_exit_2(report_config):
    """A bad --since or an unwritable --output is a usage error: exit 2, no traceback."""
    bad_day = run_cli(["report", "--config", str(report_config), "--since", "June"])
    assert bad_day.returncode == 2 and "is not a date" in bad_day.stderr
    cmd = ["report", "--config", str(report_config), "--output", "/nonexistent/dir/r.html"]
    unwritable = run_cli(cmd)
    assert unwritable.returncode == 2 and "/nonexistent/dir/r.html" in unwritable.stderr
    assert "Traceback" not in bad_day.stderr + unwritable.stderr
