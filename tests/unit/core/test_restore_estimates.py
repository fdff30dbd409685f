"""A sample's restore estimate is held to the last measured full restore, never reported below it."""

from __future__ import annotations

from continuity.exercises.sample_restore import RestoreTestResult, calibrated_estimate, last_full_restore


def _full(seconds: float, rows: int, at: str, success: bool = True) -> RestoreTestResult:
    return RestoreTestResult(tested_at=at, success=success, failed_checks=[], backup_id=f"logical-{at}",
                             full_restore=True, restore_seconds=seconds, total_rows=rows, sample_rows=rows)


def test_the_estimate_never_falls_below_the_last_measurement_scaled_to_the_backup() -> None:
    # The weekly test's sample said 1.12 s for 525,000 rows; restoring it whole took 1.96 s.
    full = _full(1.96, 525_000, "2026-11-01T05:00:00+00:00")
    estimate, source, ratio = calibrated_estimate(1.12, 525_000, full)
    assert estimate == 1.96 and ratio == round(1.12 / 1.96, 3)
    assert source == "full restore of logical-2026-11-01T05:00:00+00:00 (525,000 rows) measured 1.96 s on 2026-11-01"
    bigger, _, _ = calibrated_estimate(1.5, 1_050_000, full)
    assert bigger == 3.92, "twice the rows: at least twice the measured time"
    pessimistic, _, ratio = calibrated_estimate(5.0, 525_000, full)
    assert pessimistic == 5.0 and ratio > 1, "a sample slower than the measurement stands"
    assert calibrated_estimate(1.12, 525_000, None) == (1.12, None, None)


def test_the_newest_successful_full_restore_is_the_one_used() -> None:
    older, newer = _full(2.0, 100, "2026-10-01T00:00:00+00:00"), _full(3.0, 100, "2026-11-01T00:00:00+00:00")
    failed = _full(0.5, 100, "2026-11-20T00:00:00+00:00", success=False)
    sample = RestoreTestResult(tested_at="2026-11-21T00:00:00+00:00", success=True, failed_checks=[])
    assert last_full_restore([older, newer, failed, sample]) is newer
    assert last_full_restore([sample]) is None
