"""dr_failover's audit in storage (#30 item 14): a name per run and attempt (no two runs share one, a rerun never
overwrites), written to every location that answers, and an error naming each location when none takes it."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from continuity.failover.records import FailoverAudit, FailoverRecords, audit_name, audit_run_prefix
from continuity.reports import AuditNotStored, run_audits, store_failover_audit
from tests.support.locations import RegionStorage


def _audit(run_id: str, outcome: str = "switchover to dr complete") -> FailoverAudit:
    return FailoverAudit(run_id=run_id, triggered_by="ada", params={"target": "dr"}, action="switchover",
                         steps=FailoverRecords(), failures={}, recorded_at="2026-12-07T06:00:00+00:00",
                         unavailability_seconds=4.2, data_loss_bytes=0, topology=None, outcome=outcome)


@pytest.fixture()
def regions(tmp_path: Path) -> list[RegionStorage]:
    return [RegionStorage(name="primary", region="us-east-1", path=tmp_path / "primary"),
            RegionStorage(name="dr", region="us-west-2", path=tmp_path / "dr")]


def test_runs_whose_ids_differ_only_in_unsafe_characters_get_different_names() -> None:
    assert audit_run_prefix("manual__a:b") != audit_run_prefix("manual__a_b")
    at = datetime(2026, 12, 7, tzinfo=timezone.utc)
    assert audit_name("r", attempt=1, at=at) != audit_name("r", attempt=2, at=at)
    assert audit_name("r", attempt=1, at=at).startswith(audit_run_prefix("r").removeprefix("audit/failover/"))


def test_a_rerun_adds_an_audit_beside_the_first(regions) -> None:
    store_failover_audit(_audit("manual__1", "failed at promote"), regions, attempt=1, warn=print)
    store_failover_audit(_audit("manual__1"), regions, attempt=1, warn=print)
    for location in regions:
        assert [a["outcome"] for a in run_audits(location, "manual__1")] == ["failed at promote",
                                                                             "switchover to dr complete"]


def test_one_location_gone_is_said_and_the_other_holds_the_audit(regions) -> None:
    regions[0].gone = True
    said: list[str] = []
    written = store_failover_audit(_audit("manual__2"), regions, attempt=1, warn=said.append)
    assert len(written) == 1 and "location dr" in written[0]
    assert said and "location primary" in said[0] and "Could not connect" in said[0]
    assert run_audits(regions[1], "manual__2")[0]["outcome"] == "switchover to dr complete"


def test_no_location_taking_the_audit_is_an_error_naming_each(regions) -> None:
    for location in regions:
        location.gone = True
    with pytest.raises(AuditNotStored, match=r"audit of run manual__3 could not be stored in any location "
                                             r"\(.*location primary.*location dr.*\); its full text is in this "
                                             r"task's log"):
        store_failover_audit(_audit("manual__3"), regions, attempt=1, warn=lambda message: None)
