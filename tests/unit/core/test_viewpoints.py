"""The second viewpoint: what the primary's own region saw decides between a partition and a region loss."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from continuity.policy.loading import load_policy
from continuity.health.viewpoints import (
    ViewpointObservation,
    describe_viewpoints,
    load_observations,
    observe_primary,
    partition_veto,
    viewpoint_regions,
    viewpoint_variable,
)
from tests.fakes import FakeNode

NOW = datetime(2026, 12, 5, 4, 0, tzinfo=timezone.utc)


def _seen(region: str, *, ago: timedelta, writable: bool = True, primary: str = "primary") -> ViewpointObservation:
    return observe_primary(region, FakeNode(name=primary, writable=writable), clock=lambda: NOW - ago)


def test_each_region_with_nodes_is_a_viewpoint_and_has_its_own_variable() -> None:
    policy = load_policy()
    assert viewpoint_regions(policy) == ["us-east-1", "us-west-2"]
    assert viewpoint_variable("us-east-1") == "continuity_viewpoint_us_east_1"


def test_an_observation_says_writable_read_only_or_unreachable_and_why() -> None:
    assert _seen("us-east-1", ago=timedelta(0)).reason.startswith("primary primary writable (round trip ")
    read_only = _seen("us-east-1", ago=timedelta(0), writable=False)
    assert read_only.reachable and not read_only.writable and "in recovery" in read_only.reason
    gone = observe_primary("us-west-2", FakeNode(name="primary", reachable=False), clock=lambda: NOW)
    assert not gone.reachable and not gone.writable
    assert gone.reason == "primary primary not reachable: node primary is unreachable (fake)"


def test_the_primary_region_seeing_it_writable_lately_is_a_partition() -> None:
    policy = load_policy()  # viewpoints every 2 minutes: recent means within 4
    veto = partition_veto(policy, {"us-east-1": _seen("us-east-1", ago=timedelta(seconds=90))}, now=NOW)
    assert veto is not None and veto.startswith("the primary's own region us-east-1 saw primary primary writable 90 s ago")
    assert "(a partition), the primary is not lost" in veto


def test_silence_a_gone_primary_or_another_primary_seen_is_no_veto() -> None:
    policy = load_policy()
    assert partition_veto(policy, {}, now=NOW) is None, "never recorded"
    assert partition_veto(policy, {"us-east-1": _seen("us-east-1", ago=timedelta(minutes=5))}, now=NOW) is None
    assert partition_veto(policy, {"us-east-1": _seen("us-east-1", ago=timedelta(seconds=10), writable=False)},
                          now=NOW) is None
    before_a_failover = _seen("us-east-1", ago=timedelta(seconds=10), primary="dr")
    assert partition_veto(policy, {"us-east-1": before_a_failover}, now=NOW) is None
    # The DR region's view never vetoes: it is the monitor's side of a partition.
    assert partition_veto(policy, {"us-west-2": _seen("us-west-2", ago=timedelta(seconds=10))}, now=NOW) is None


def test_each_region_is_described_by_its_latest_observation_or_its_silence() -> None:
    policy = load_policy()
    lines = describe_viewpoints(policy, {"us-east-1": _seen("us-east-1", ago=timedelta(minutes=6)),
                                         "us-west-2": None}, now=NOW)
    assert lines[0].startswith("us-east-1: silent for 360 s (over 2 periods: consistent with losing that region); "
                               "last from us-east-1, 360 s ago: primary primary writable")
    assert lines[1] == "us-west-2: no observation recorded (see dr_viewpoint_probe)"


def test_a_variable_that_is_not_an_observation_is_ignored_and_said() -> None:
    stored = {viewpoint_variable("us-east-1"): "{not json", viewpoint_variable("us-west-2"):
              _seen("us-west-2", ago=timedelta(0)).model_dump_json()}
    warnings: list[str] = []
    found = load_observations(["us-east-1", "us-west-2"], stored.get, warn=warnings.append)
    assert found["us-east-1"] is None and found["us-west-2"].region == "us-west-2"
    assert warnings[0].startswith("Variable continuity_viewpoint_us_east_1 does not hold an observation (")
