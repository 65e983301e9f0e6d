"""Prometheus metrics of each run: pushed to a Pushgateway, or written as a textfile.

One registry per run, built from its :class:`~archiver.results.RunSummary` alone
(:func:`build_registry`). Every metric is a gauge describing the last run (the
Prometheus pattern for batch jobs), and the only labels are ``outcome``, ``mode``
(``run`` for ``run`` and ``schedule``, ``backfill`` for ``backfill``, so a backfill
never overwrites the scheduled run's figures) and, when ``catalog.worker_id`` is
set, ``worker``. Never a pass id, a reason or anything else unbounded::

    idpass_archiver_passes{outcome="archived"}         passes per outcome in the run
    idpass_archiver_images                             images archived
    idpass_archiver_image_bytes                        their decoded bytes
    idpass_archiver_run_duration_seconds               finished_at - started_at
    idpass_archiver_at_risk                            passes due before the next run
    idpass_archiver_expired                            passes expired without archiving
    idpass_archiver_last_run_timestamp_seconds         when the run finished (Unix time)
    idpass_archiver_last_run_exit_code                 the exit code the command returns
    idpass_archiver_last_run_success                   1 when the run succeeded, else 0
    idpass_archiver_last_success_timestamp_seconds     when a run last succeeded
    idpass_archiver_build_info{version="..."}          always 1

A run **succeeds** when it completed its cycle: no systemic failure (exit code 3),
not stopped early (SIGTERM, a deadline), and every configured source synced. Passes
that failed, wait to retry or expired do not make it unsuccessful: they have their
own metrics and alerts, and one bad pass must not hide whether the job runs at all.
Both this and the exit code are the summary's own (:attr:`RunSummary.succeeded
<archiver.results.RunSummary.succeeded>`, :attr:`RunSummary.exit_code
<archiver.results.RunSummary.exit_code>`): the gauges report what the process exits
with and what the run manifest and the catalog record.

Where they go (``[metrics]``): with ``pushgateway_url``, a POST (Prometheus'
"pushadd") to ``/metrics/job/<job>/mode/<mode>[/worker/<worker>]`` with an explicit
timeout. POST replaces only the metric names sent, and an unsuccessful run does not
send the last-success gauge, so the gateway keeps the previous success's timestamp.
With ``textfile_path``, a node-exporter textfile written to a temporary file beside
it and renamed over it (atomic); the last-success timestamp of an unsuccessful run is
carried over from the previous file. Backfills write ``<name>-backfill.prom`` beside
it. Both may be set. A metrics failure is logged (``metrics_failed``) and never
changes the run's outcome or exit code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import structlog
from prometheus_client import CollectorRegistry, pushadd_to_gateway, write_to_textfile
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from archiver import __version__

if TYPE_CHECKING:
    from archiver.config import Settings
    from archiver.results import RunSummary

Mode = Literal["run", "backfill"]

PREFIX = "idpass_archiver_"
LAST_SUCCESS = PREFIX + "last_success_timestamp_seconds"

log = structlog.get_logger("archiver.metrics")


class _RunCollector(Collector):
    """The gauges of one finished run; ``labels`` go on every sample."""

    def __init__(
        self, summary: RunSummary, labels: Mapping[str, str], last_success: float | None
    ) -> None:
        self.summary = summary
        self.labels = dict(labels)
        self.last_success = last_success

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(PREFIX + name, doc, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), value)
        return family

    def collect(self) -> Iterator[Metric]:
        s = self.summary
        doc = s.to_json()
        finished = s.finished_at or s.started_at
        passes = GaugeMetricFamily(
            PREFIX + "passes",
            "Passes in the last run, per outcome.",
            labels=[*self.labels, "outcome"],
        )
        for outcome, count in sorted(doc["counts"].items()):
            passes.add_metric([*self.labels.values(), outcome], count)
        yield passes
        yield self._gauge("images", "Images archived by the last run.", doc["images"])
        yield self._gauge(
            "image_bytes",
            "Decoded bytes of the images archived by the last run.",
            doc["image_bytes"],
        )
        yield self._gauge(
            "run_duration_seconds",
            "Wall-clock duration of the last run.",
            max(0.0, (finished - s.started_at).total_seconds()),
        )
        yield self._gauge(
            "at_risk",
            "Passes with work left whose retention window closes before the next run.",
            doc["at_risk"],
        )
        yield self._gauge(
            "expired",
            "Passes whose retention window closed before they were archived (last run).",
            doc["counts"].get("expired", 0),
        )
        yield self._gauge(
            "images_absent",
            "Passes settled without images inside their window after confirming reads "
            "(last run); apart from retention 0 (outcome no_images).",
            doc["counts"].get("images_absent", 0),
        )
        yield self._gauge(
            "slot_conflicts",
            "Passes failed because two reads returned different images for a slot (last run).",
            doc["slot_conflicts"],
        )
        yield self._gauge(
            "last_run_timestamp_seconds",
            "When the last run finished, in Unix seconds.",
            finished.timestamp(),
        )
        yield self._gauge("last_run_exit_code", "The exit code of the last run.", s.exit_code)
        yield self._gauge(
            "last_run_success",
            "1 when the last run completed its cycle (no systemic failure, not stopped "
            "early, every source synced), else 0.",
            1 if s.succeeded else 0,
        )
        if self.last_success is not None:
            yield self._gauge(
                "last_success_timestamp_seconds",
                "When a run last completed its cycle, in Unix seconds.",
                self.last_success,
            )
        info = GaugeMetricFamily(
            PREFIX + "build_info",
            "The archiver's version (always 1).",
            labels=[*self.labels, "version"],
        )
        info.add_metric([*self.labels.values(), __version__], 1)
        yield info


def build_registry(
    summary: RunSummary,
    *,
    labels: Mapping[str, str] | None = None,
    previous_success: float | None = None,
) -> CollectorRegistry:
    """The run's metrics. The last-success gauge is the run's own finish time when it
    succeeded, else ``previous_success`` (omitted when that is None)."""
    last_success = (
        (summary.finished_at or summary.started_at).timestamp()
        if summary.succeeded
        else previous_success
    )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_RunCollector(summary, labels or {}, last_success))
    return registry


def read_last_success(path: Path) -> float | None:
    """The last-success timestamp in an earlier textfile, or None (no file, or none
    in it, or unreadable: then the gauge starts again from the next success)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == LAST_SUCCESS:
                    return float(sample.value)
    except ValueError:
        log.warning("metrics_textfile_unparsable", path=str(path))
    return None


def textfile_for(path: Path, mode: Mode) -> Path:
    """Where a run of ``mode`` writes: ``path``, or ``<stem>-backfill.prom`` beside it."""
    return path if mode == "run" else path.with_name(f"{path.stem}-{mode}{path.suffix}")


def write_textfile(summary: RunSummary, path: Path, *, labels: Mapping[str, str]) -> None:
    """Write the node-exporter textfile atomically (temporary file, then rename)."""
    registry = build_registry(summary, labels=labels, previous_success=read_last_success(path))
    write_to_textfile(str(path), registry)


def push(
    summary: RunSummary,
    gateway: str,
    *,
    job: str,
    grouping_key: Mapping[str, str],
    timeout: float,
) -> None:
    """POST the run's metrics to a Pushgateway (see the module docstring)."""
    registry = build_registry(summary)
    pushadd_to_gateway(
        gateway, job=job, registry=registry, grouping_key=dict(grouping_key), timeout=timeout
    )


def publish(summary: RunSummary, settings: Settings, *, command: str | None = None) -> None:
    """Send a finished run's metrics wherever ``[metrics]`` says; ``command`` is the
    CLI command (``backfill`` gets its own series). Never raises: a failure is logged
    as ``metrics_failed``. A dry run publishes nothing."""
    cfg = settings.metrics
    if summary.dry_run or not cfg.enabled:
        return
    mode: Mode = "backfill" if command == "backfill" else "run"
    labels: dict[str, str] = {"mode": mode}
    if settings.catalog.worker_id:
        labels["worker"] = settings.catalog.worker_id
    if cfg.pushgateway_url is not None:
        try:
            push(
                summary,
                cfg.pushgateway_url,
                job=cfg.job,
                grouping_key=labels,
                timeout=cfg.timeout_seconds,
            )
            log.debug("metrics_pushed", job=cfg.job, **labels)
        except Exception as exc:  # a metrics failure never fails the run
            log.warning("metrics_failed", target="pushgateway", error=_describe(exc))
    if cfg.textfile_path is not None:
        path = textfile_for(cfg.textfile_path, mode)
        try:
            write_textfile(summary, path, labels=labels)
            log.debug("metrics_written", path=str(path))
        except Exception as exc:  # a metrics failure never fails the run
            log.warning("metrics_failed", target="textfile", error=_describe(exc))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]
