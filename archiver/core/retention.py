"""Retention-window arithmetic (pure)."""

from __future__ import annotations

from datetime import datetime, timedelta


def images_deadline(completed_at: datetime | None, retention_days: int | None) -> datetime | None:
    """When GlobalData deletes the images: completed_at + image_retention_days.

    ``None`` when either is unknown. With retention 0 the deadline is the completion
    time itself: the images are gone at once.
    """
    if completed_at is None or retention_days is None:
        return None
    if retention_days < 0:
        raise ValueError("image_retention_days cannot be negative")
    if completed_at.tzinfo is None:
        raise ValueError("completed_at must be timezone-aware")
    return completed_at + timedelta(days=retention_days)
