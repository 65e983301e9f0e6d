"""The pipeline's settings, taken from the configuration by ``app.pipeline_options``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal


@dataclass(frozen=True, slots=True)
class PipelineOptions:
    # Passes whose details responses are held (and decoded) at once; as many more may
    # be uploading. Bounds memory: each holds a response body or its decoded images.
    concurrency: int = 4
    # Details requests in flight (api.concurrency). A request waiting for the API's
    # answer holds no body: the transport waits for one of the concurrency slots
    # before reading it, so API latency is hidden without more memory.
    requests: int = 12
    # Puts in flight at once (storage.upload_threads): each holds a buffer of the S3
    # client's, so this bounds memory as the thread pool did for synchronous puts.
    max_puts: int = 16
    max_image_bytes: int = 15 * 1024 * 1024
    archive_statuses: tuple[str, ...] = ("complete",)
    decryption: str = "server"
    max_attempts: int = 5
    retry_base: timedelta = timedelta(minutes=5)
    retry_cap: timedelta = timedelta(hours=6)
    not_ready_recheck: timedelta = timedelta(hours=1)
    # Confirmed absence (archiver.pipeline.confirm): an answer with no images or a
    # slot null is read again this many times, this far apart, before it settles;
    # never when the next read would come later than confirm_margin before the deadline.
    # A run waits for the confirming reads it scheduled up to confirm_wait ahead;
    # later ones are read by a later run.
    confirm_reads: int = 2
    confirm_spacing: timedelta = timedelta(seconds=5)
    confirm_wait: timedelta = timedelta(minutes=5)
    confirm_margin: timedelta = timedelta(hours=1)
    sse: str = "aws:kms"
    kms_key_id: str | None = None
    worker_id: str = "worker"
    lease_seconds: int = 600
    not_ready_margin: timedelta = timedelta(hours=24)
    # When the next scheduled run starts: passes due before it are flagged at risk.
    next_run: datetime | None = None
    # Object Lock retention on every object written (None: no retention).
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] | None = None
    lock_retain_days: int = 2555
