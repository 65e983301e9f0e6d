"""``idpass-archiver schedule``: a long-running process that runs one cycle per cron tick.

APScheduler runs the job with ``max_instances=1`` (never two cycles at once) and
``coalesce=True`` (runs missed while one was going, or while the process was
suspended, collapse into one), and still starts a run that is at most
``schedule.misfire_grace_seconds`` late. On SIGTERM or SIGINT no new cycle starts;
the cycle in flight stops taking passes, finishes those in flight (within
``schedule.stop_grace_seconds``), records the run, and the process exits 0.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from datetime import tzinfo
from types import FrameType
from typing import Any

import structlog
from apscheduler.triggers.cron import CronTrigger

from archiver.errors import AlreadyRunning, ArchiverError

log = structlog.get_logger("archiver.scheduler")


def make_trigger(cron: str, timezone: str | tzinfo) -> CronTrigger:
    """A trigger from a 5-field crontab entry, or a 6-field one with seconds first
    (``*/10 * * * * *``: every ten seconds, for tests and fast cycles; its
    day-of-week field uses APScheduler's names/numbering, mon=0)."""
    fields = cron.split()
    if len(fields) == 5:
        return CronTrigger.from_crontab(cron, timezone=timezone)
    if len(fields) == 6:
        second, minute, hour, day, month, dow = fields
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=dow,
            timezone=timezone,
        )
    raise ValueError(f"expected 5 fields (or 6 with seconds first), got {len(fields)}")


def serve(
    *,
    cron: str,
    timezone: str,
    misfire_grace_seconds: int,
    cycle: Callable[[threading.Event], Any],
    stop: threading.Event | None = None,
) -> int:
    """Run ``cycle(stop)`` on every tick until SIGTERM/SIGINT (or ``stop``)."""
    # imported here: the one-shot commands (run, backfill...) never start a scheduler
    from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
    from apscheduler.schedulers.background import BackgroundScheduler

    stop = stop or threading.Event()
    scheduler = BackgroundScheduler(timezone=timezone)

    def job() -> None:
        if stop.is_set():
            return
        try:
            cycle(stop)
        except AlreadyRunning as exc:
            log.warning("scheduled_run_skipped", reason=exc.reason, error=str(exc))
        except ArchiverError as exc:
            log.error("scheduled_run_failed", reason=exc.reason, error=str(exc))

    def missed(event: JobExecutionEvent) -> None:
        log.warning("scheduled_run_missed", scheduled_for=str(event.scheduled_run_time))

    scheduler.add_listener(missed, EVENT_JOB_MISSED)
    scheduler.add_job(
        job,
        make_trigger(cron, timezone),
        id="archive-cycle",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=misfire_grace_seconds,
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("schedule_stopping", signal=signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    scheduler.start()
    job_ = scheduler.get_job("archive-cycle")
    log.info(
        "schedule_started",
        cron=cron,
        timezone=timezone,
        next_run=str(job_.next_run_time) if job_ else None,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        scheduler.shutdown(wait=True)  # the cycle in flight sees `stop` and winds down
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        log.info("schedule_stopped")
    return 0
