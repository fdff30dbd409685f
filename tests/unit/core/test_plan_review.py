"""The plan review's line on the region-loss exercise comes from the exercises' stored reports (#31 item 9:
it was a fixed `not measured`)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from continuity.exercises.plan_review import region_recovery_line
from continuity.storage.locations import FileLocation

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _report(location: FileLocation, exercise_id: str, started: datetime, **fields) -> None:
    document = {"kind": "region-recovery", "exercise_id": exercise_id, "region": "us-east-1",
                "started_at": started.isoformat(), "objectives": [], **fields}
    location.put_bytes(f"reports/region-recovery/{exercise_id}.json", json.dumps(document).encode())


def test_the_newest_exercise_of_the_period_is_summarised_with_what_it_missed(tmp_path) -> None:
    location = FileLocation(name="dr", region="us-west-2", path=tmp_path)
    start = NOW - timedelta(days=365)
    assert region_recovery_line([location], start, NOW) == "not measured (no region-loss exercise in the period)"
    _report(location, "old", NOW - timedelta(days=400), downtime_seconds=5.0, left_as_found=True)
    assert region_recovery_line([location], start, NOW).startswith("not measured"), "outside the period"
    _report(location, "q3", NOW - timedelta(days=80), downtime_seconds=9.4, left_as_found=True,
            objectives=[{"objective": "RTO user_authentication", "verdict": "pass"}])
    _report(location, "q4", NOW - timedelta(days=5), downtime_seconds=2400.0, left_as_found=False,
            objectives=[{"objective": "RTO user_authentication", "verdict": "FAIL"},
                        {"objective": "RPO configuration_data", "verdict": "not measured"}])
    line = region_recovery_line([location], start, NOW)
    assert line == ("exercise q4 on 2026-12-02 (2 in the period): us-east-1 lost, every function back in 2400.0 s; "
                    "1 objective(s) missed (RTO user_authentication); NOT left as found")
