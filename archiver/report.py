"""The compliance report: pure renderings of a :class:`~archiver.catalog.coverage.Coverage`.

``render_table`` is for a terminal, ``render_json`` for machines (stable keys, ISO 8601
UTC timestamps, a format name and version) and ``render_html`` for people: one
self-contained file (inline CSS, an inline SVG chart, no scripts, no external URLs; a
Content-Security-Policy forbids loading anything). Every value placed in the HTML goes
through :func:`html.escape`. The key numbers carry stable ids and ``data-*``
attributes (``id="total-known" data-value="12"``, ``<g class="day" data-day=...>``) so
that tests and scripts can read them.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from archiver.catalog import WORK_STATES, Outcome
from archiver.catalog.coverage import Coverage, DayCoverage
from archiver.clock import isoformat

FORMAT = "idpass-archiver/coverage-report"
VERSION = 1


def _totals(c: Coverage) -> list[tuple[str, str, int]]:
    """The totals shown, in order: (key, label, count)."""
    return [
        ("known", "Known", c.known),
        ("archived", "Archived", c.count(Outcome.ARCHIVED)),
        ("expired", "Expired without archiving", c.count(Outcome.EXPIRED)),
        ("failed", "Failed", c.count(Outcome.FAILED)),
        ("work_left", "Work left", c.work_left),
        ("no_images", "No images to keep", c.count(Outcome.NO_IMAGES)),
        # apart from retention 0: the API answered none inside the window, confirmed
        ("images_absent", "No images inside the window", c.count(Outcome.IMAGES_ABSENT)),
        ("skipped", "Skipped", c.count(Outcome.SKIPPED)),
    ]


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _when(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _left(deadline: datetime, now: datetime) -> str:
    """Time until ``deadline``, coarse: '2 d 4 h', '35 min', or 'overdue'."""
    delta = deadline - now
    if delta <= timedelta(0):
        return "overdue"
    days, rest = divmod(int(delta.total_seconds()), 86400)
    hours, rest = divmod(rest, 3600)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {rest // 60} min"
    return f"{max(1, rest // 60)} min"


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split()) or "-"


def _period(c: Coverage) -> str:
    if c.since is None:
        return "all days with activity"
    return f"the days since {c.since.astimezone(UTC).date().isoformat()}"


# -- JSON -------------------------------------------------------------------------------


def to_json(c: Coverage) -> dict[str, Any]:
    """The report as a JSON document (the ``--format json`` output)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "generated_at": isoformat(c.generated_at),
        "since": isoformat(c.since) if c.since is not None else None,
        "totals": {
            **{key: n for key, _, n in _totals(c)},
            "by_state": {s.value: c.count(s) for s in Outcome},
        },
        "period": {
            "archived": c.period_archived,
            "expired": c.period_expired,
            "images": c.period_images,
            "image_bytes": c.period_image_bytes,
        },
        "days": [
            {
                "day": d.day.isoformat(),
                "archived": d.archived,
                "images": d.images,
                "image_bytes": d.image_bytes,
                "expired": d.expired,
            }
            for d in c.days
        ],
        "upcoming_deadlines": [
            {"pass_id": u.pass_id, "deadline": isoformat(u.deadline), "state": u.state.value}
            for u in c.upcoming
        ],
        "failures": [
            {
                "pass_id": f.pass_id,
                "reason": f.reason,
                "attempts": f.attempts,
                "failed_at": isoformat(f.failed_at),
            }
            for f in c.failures
        ],
    }


def render_json(c: Coverage) -> str:
    return json.dumps(to_json(c), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


# -- text -------------------------------------------------------------------------------


def render_table(c: Coverage) -> str:
    """Plain text for a terminal."""
    out = [
        f"ID Pass archive coverage, generated {_when(c.generated_at)}",
        "",
        "Passes in the catalog",
    ]
    out += [f"  {label:<27}{n:>8}" for _, label, n in _totals(c)]
    out += ["", f"Per day (UTC), {_period(c)}"]
    if c.days:
        out.append(f"  {'day':<12}{'archived':>10}{'images':>10}{'MB':>12}{'expired':>10}")
        for d in c.days:
            out.append(
                f"  {d.day.isoformat():<12}{d.archived:>10}{d.images:>10}"
                f"{_mb(d.image_bytes):>12}{d.expired:>10}"
            )
        out.append(
            f"  {'total':<12}{c.period_archived:>10}{c.period_images:>10}"
            f"{_mb(c.period_image_bytes):>12}{c.period_expired:>10}"
        )
    else:
        out.append("  no passes archived or expired")
    out += ["", "Upcoming deadlines (work left, earliest first)"]
    out += [
        f"  {u.pass_id}  {_when(u.deadline)}  {u.state.value:<9}  "
        f"{_left(u.deadline, c.generated_at)}"
        for u in c.upcoming
    ] or ["  none"]
    failed = c.count(Outcome.FAILED)
    shown = f", the latest {len(c.failures)} shown" if len(c.failures) < failed else ""
    out += ["", f"Failed passes ({failed}{shown})"]
    out += [
        f"  {f.pass_id}  {_when(f.failed_at)}  attempts {f.attempts}  {_one_line(f.reason)}"
        for f in c.failures
    ] or ["  none"]
    return "\n".join(out) + "\n"


# -- HTML -------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


_CSS = """
:root { --archived: #2e7d32; --expired: #c62828; --ink: #1d2430; --muted: #5b6572;
  --line: #d9dee5; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { color: var(--ink); margin: 2rem auto; max-width: 72rem; padding: 0 1rem; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.muted { color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(8rem, 1fr));
  gap: .75rem; margin: 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .6rem 1rem; }
.card dt { color: var(--muted); font-size: .85rem; } .card dd { font-size: 1.6rem; margin: 0; }
.card.archived dd { color: var(--archived); }
.card.expired dd, .card.failed dd { color: var(--expired); }
.legend span { display: inline-block; margin-right: 1.25rem; }
.swatch { display: inline-block; width: .8rem; height: .8rem; margin-right: .35rem;
  vertical-align: -1px; border-radius: 2px; }
.swatch.archived { background: var(--archived); } .swatch.expired { background: var(--expired); }
.chart-wrap { overflow-x: auto; }
svg .bar.archived { fill: var(--archived); } svg .bar.expired { fill: var(--expired); }
svg .grid { stroke: var(--line); stroke-width: 1; } svg .axis { stroke: var(--muted); }
svg text { fill: var(--muted); font-size: 11px; } svg text.count { fill: var(--ink); }
table { border-collapse: collapse; margin-top: .5rem; }
th, td { border-bottom: 1px solid var(--line); padding: .3rem .8rem; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
td.id { font-family: ui-monospace, monospace; font-size: .9rem; }
tfoot td { font-weight: 600; }
.overdue { color: var(--expired); font-weight: 600; }
"""


def _time(ts: datetime) -> str:
    return f'<time datetime="{_e(isoformat(ts))}">{_e(_when(ts))}</time>'


def _calendar(c: Coverage) -> list[DayCoverage]:
    """Every UTC day from the period's start (or the first active day) to the last
    active day, empty days included, so the chart's x axis is time."""
    if not c.days:
        return []
    by_day = {d.day: d for d in c.days}
    first = c.days[0].day
    if c.since is not None:
        first = min(first, c.since.astimezone(UTC).date())
    n = (c.days[-1].day - first).days + 1
    days = (first + timedelta(days=i) for i in range(n))
    return [by_day.get(day) or DayCoverage(day=day) for day in days]


def _ticks(top: int) -> list[int]:
    """Round y-axis ticks from 0 covering ``top``, at most 6 of them."""
    magnitude = 1
    while True:
        for m in (1, 2, 5):
            step = m * magnitude
            if top <= 5 * step:
                return list(range(0, math.ceil(top / step) * step + 1, step))
        magnitude *= 10


def _chart(days: list[DayCoverage]) -> str:
    """An SVG bar chart: per day, an archived and an expired bar side by side."""
    if not days:
        return '<p id="chart-empty" class="muted">No passes archived or expired in this period.</p>'
    left, right, top, bottom, height = 48, 12, 22, 30, 220
    step = min(96.0, max(6.0, 960 / len(days)))
    width = left + right + step * len(days)
    ticks = _ticks(max(max(d.archived, d.expired) for d in days) or 1)
    scale = height / ticks[-1]
    bar = max(1.0, step * 0.4)
    every = math.ceil(72 / step)  # a date label needs about 70 px
    parts = [
        f'<svg id="chart" role="img" '
        f'aria-labelledby="chart-title" width="{width:.0f}" height="{top + height + bottom}" '
        f'viewBox="0 0 {width:.0f} {top + height + bottom}" data-days="{len(days)}">',
        '<title id="chart-title">Passes archived and expired per UTC day</title>',
        f'<text x="4" y="{top - 10}">passes</text>',
    ]
    for t in ticks:
        y = top + height - t * scale
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t}</text>'
        )
    for i, d in enumerate(days):
        x = left + i * step + (step - 2 * bar) / 2
        day = d.day.isoformat()
        parts.append(
            f'<g class="day" data-day="{_e(day)}" data-archived="{d.archived}" '
            f'data-expired="{d.expired}"><title>{_e(day)}: {d.archived} archived, '
            f"{d.expired} expired</title>"
        )
        for cls, n, bx in (("archived", d.archived, x), ("expired", d.expired, x + bar)):
            if n:
                h = n * scale
                parts.append(
                    f'<rect class="bar {cls}" x="{bx:.1f}" y="{top + height - h:.1f}" '
                    f'width="{bar:.1f}" height="{h:.1f}"/>'
                )
                if bar >= 14:  # room for the count above the bar
                    parts.append(
                        f'<text class="count" x="{bx + bar / 2:.1f}" '
                        f'y="{top + height - h - 4:.1f}" text-anchor="middle">{n}</text>'
                    )
        if i % every == 0:
            parts.append(
                f'<text x="{left + (i + 0.5) * step:.1f}" y="{top + height + 16}" '
                f'text-anchor="middle">{_e(day)}</text>'
            )
        parts.append("</g>")
    parts.append(
        f'<line class="axis" x1="{left}" x2="{width - right:.1f}" '
        f'y1="{top + height}" y2="{top + height}"/></svg>'
    )
    return "\n".join(parts)


# A table cell: (CSS class, content already escaped); a row: (attributes, cells).
_Cell = tuple[str, str]
_Row = tuple[str, Sequence[_Cell]]


def _table(table_id: str, headers: Sequence[_Cell], rows: Sequence[_Row], foot: str = "") -> str:
    head = "".join(f'<th class="{cls}">{_e(text)}</th>' for cls, text in headers)
    body = "\n".join(
        f"<tr{attrs}>" + "".join(f'<td class="{cls}">{cell}</td>' for cls, cell in cells) + "</tr>"
        for attrs, cells in rows
    )
    return (
        f'<table id="{table_id}" data-rows="{len(rows)}">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>{foot}\n</table>"
    )


def _number(element_id: str, value: int, shown: str | None = None) -> str:
    """A number a script can read: ``<span id=... data-value=...>``."""
    return f'<span id="{element_id}" data-value="{value}">{_e(shown or value)}</span>'


def _section(title: str, *body: str) -> str:
    return "\n".join(("<section>", f"<h2>{_e(title)}</h2>", *body, "</section>"))


def _note(text: str) -> str:
    return f'<p class="muted">{_e(text)}</p>'


def _totals_html(c: Coverage) -> str:
    cards = "\n".join(
        f'<div class="card {name}"><dt>{_e(label)}</dt><dd>{_number(f"total-{name}", n)}</dd></div>'
        for name, label, n in ((k.replace("_", "-"), label, n) for k, label, n in _totals(c))
    )
    work = ", ".join(f"{s.value.replace('_', ' ')} {c.count(s)}" for s in WORK_STATES)
    return _section(
        "Passes in the catalog",
        f'<dl class="cards">\n{cards}\n</dl>',
        _note(f"Work left: {work}. These count every pass in the catalog, whatever the period."),
    )


def _days_html(c: Coverage) -> str:
    legend = (
        '<p class="legend">'
        '<span><i class="swatch archived"></i>archived (on the day of archival)</span>'
        '<span><i class="swatch expired"></i>expired without archiving '
        "(on the day the window closed)</span></p>"
    )
    rows = [
        (
            f' data-day="{d.day.isoformat()}" data-archived="{d.archived}" '
            f'data-images="{d.images}" data-bytes="{d.image_bytes}" data-expired="{d.expired}"',
            [
                ("text", d.day.isoformat()),
                ("num", str(d.archived)),
                ("num", str(d.images)),
                ("num", _mb(d.image_bytes)),
                ("num", str(d.expired)),
            ],
        )
        for d in c.days
    ]
    foot = (
        "\n<tfoot><tr><td>Total</td>"
        f"<td>{_number('period-archived', c.period_archived)}</td>"
        f"<td>{_number('period-images', c.period_images)}</td>"
        f"<td>{_number('period-bytes', c.period_image_bytes, _mb(c.period_image_bytes))}</td>"
        f"<td>{_number('period-expired', c.period_expired)}</td></tr></tfoot>"
    )
    headers = [("text", "Day (UTC)")] + [
        ("num", h) for h in ("Archived", "Images", "MB", "Expired")
    ]
    return _section(
        "Archived and expired passes per day",
        legend,
        f'<div class="chart-wrap">\n{_chart(_calendar(c))}\n</div>',
        _table("days", headers, rows, foot),
    )


def _upcoming_html(c: Coverage) -> str:
    rows = [
        (
            f' data-pass="{_e(u.pass_id)}"',
            [
                ("id", _e(u.pass_id)),
                ("text", _time(u.deadline)),
                ("text", _e(u.state.value)),
                (
                    "text overdue" if u.deadline <= c.generated_at else "text",
                    _e(_left(u.deadline, c.generated_at)),
                ),
            ],
        )
        for u in c.upcoming
    ]
    headers = [("text", h) for h in ("Pass", "Deadline", "State", "Time left")]
    return _section(
        "Upcoming deadlines",
        _note(
            "Passes with work left, the earliest retention deadline first. An overdue "
            "pass is settled as expired by the next run."
        ),
        _table("upcoming", headers, rows),
    )


def _failures_html(c: Coverage) -> str:
    failed = c.count(Outcome.FAILED)
    rows = [
        (
            f' data-pass="{_e(f.pass_id)}"',
            [
                ("id", _e(f.pass_id)),
                ("text", _time(f.failed_at)),
                ("num", str(f.attempts)),
                ("text", _e(_one_line(f.reason))),
            ],
        )
        for f in c.failures
    ]
    headers = [("text", "Pass"), ("text", "Failed at"), ("num", "Attempts"), ("text", "Reason")]
    shown = f"The latest {len(c.failures)} of {failed}." if len(c.failures) < failed else ""
    return _section(
        "Failed passes",
        _note(f"They need a person: the reason names the cause. {shown}".strip()),
        _table("failures", headers, rows),
    )


def render_html(c: Coverage) -> str:
    """One self-contained HTML page (open it in any browser)."""
    since = f' data-since="{_e(isoformat(c.since))}"' if c.since is not None else ""
    header = (
        "<header>\n<h1>ID Pass archive coverage</h1>\n"
        f'<p class="muted">Generated <span id="generated-at" '
        f'data-value="{_e(isoformat(c.generated_at))}">{_time(c.generated_at)}</span>. '
        f'Days are UTC days. Daily figures: <span id="period"{since}>'
        f"{_e(_period(c))}</span>.</p>\n</header>"
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'"
    head = "\n".join(
        (
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta name="generator" content="idpass-archiver ({_e(FORMAT)} v{VERSION})">',
            f"<title>ID Pass archive coverage, {_e(_when(c.generated_at))}</title>",
            f"<style>{_CSS}</style>",
        )
    )
    body = "\n\n".join(
        (header, _totals_html(c), _days_html(c), _upcoming_html(c), _failures_html(c))
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{head}\n</head>\n<body>\n'
        f"{body}\n</body>\n</html>\n"
    )
