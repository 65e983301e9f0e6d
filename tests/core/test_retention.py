from datetime import UTC, datetime, timedelta

import pytest

from archiver.core.retention import images_deadline

T0 = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)


def test_deadline_is_completion_plus_retention_days():
    """The deadline is completed_at plus image_retention_days whole days."""
    assert images_deadline(T0, 30) == T0 + timedelta(days=30)


def test_retention_zero_means_deadline_at_completion():
    """With retention 0 the window closes at completion."""
    assert images_deadline(T0, 0) == T0


def test_unknown_inputs_give_unknown_deadline():
    """Without completed_at or retention the deadline is unknown."""
    assert images_deadline(None, 30) is None
    assert images_deadline(T0, None) is None


def test_naive_completion_time_is_refused():
    """A timestamp without a timezone cannot be used for retention."""
    with pytest.raises(ValueError, match="timezone"):
        images_deadline(datetime(2026, 1, 1), 3)


def test_deadline_crosses_dst_and_leap_day_in_utc():
    """Days are 24-hour UTC days, so leap days count and DST does not exist."""
    start = datetime(2028, 2, 28, tzinfo=UTC)
    assert images_deadline(start, 2) == datetime(2028, 3, 1, tzinfo=UTC)
