"""The primary as each region sees it: the second viewpoint that tells a partition from a region loss.

The health monitor probes from the control region. When it loses the primary, that is either the
primary gone (its region lost, or the server down) or the path between the control region and the
primary's region cut, with the primary still serving its region. Only a probe from the primary's
own region can tell them apart, and a probe there runs only while that region's worker is alive:
so dr_viewpoint_probe records, per region and on that region's queue, what it saw and when.
Recent "writable" from the primary's region means a partition (alert, never promote); silence for
two probe periods is what losing the region looks like; "not reachable" from there agrees with the
monitor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone

from pydantic import BaseModel, ConfigDict

from continuity.policy.model import Policy

from continuity.policy.loading import cron_period
from continuity.postgres.node import NodeUnreachable, PostgresNode

DAG_ID = "dr_viewpoint_probe"
STALE_AFTER_PERIODS = 2  # one late run is tolerated; two missed runs are silence


def viewpoint_variable(region: str) -> str:
    """The Airflow Variable that holds `region`'s latest observation."""
    return f"continuity_viewpoint_{region.replace('-', '_')}"


def viewpoint_regions(policy: Policy) -> list[str]:
    """The regions that hold database nodes: each one looks at the primary from where it is."""
    return list(dict.fromkeys(node.region for node in policy.topology.nodes))


def viewpoint_period(policy: Policy) -> timedelta:
    return cron_period(policy.schedule_for(DAG_ID))


class ViewpointObservation(BaseModel):
    """What one region's worker saw of the primary, and when."""

    model_config = ConfigDict(extra="forbid")

    region: str
    observed_at: datetime
    primary: str
    reachable: bool
    writable: bool
    round_trip_seconds: float | None = None
    reason: str

    def describe(self, now: datetime) -> str:
        age = (now - self.observed_at).total_seconds()
        return f"from {self.region}, {age:.0f} s ago: {self.reason}"


def observe_primary(region: str, primary: PostgresNode, *,
                    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> ViewpointObservation:
    """Ask the primary, from here, whether it answers and accepts writes (read-only: nothing is written)."""
    observed_at = clock()
    started = time.monotonic()
    try:
        in_recovery = primary.is_in_recovery()  # connect and one query: the round trip from this region
        round_trip = time.monotonic() - started
    except NodeUnreachable as exc:
        return ViewpointObservation(region=region, observed_at=observed_at, primary=primary.name, reachable=False,
                                    writable=False, reason=f"primary {primary.name} not reachable: {exc}")
    if in_recovery:
        return ViewpointObservation(region=region, observed_at=observed_at, primary=primary.name, reachable=True,
                                    writable=False, round_trip_seconds=round(round_trip, 4),
                                    reason=f"primary {primary.name} answers but is in recovery (read-only)")
    return ViewpointObservation(region=region, observed_at=observed_at, primary=primary.name, reachable=True,
                                writable=True, round_trip_seconds=round(round_trip, 4),
                                reason=f"primary {primary.name} writable (round trip {round_trip * 1000:.1f} ms)")


def partition_veto(policy: Policy, observations: Mapping[str, ViewpointObservation | None], *,
                   now: datetime | None = None) -> str | None:
    """Why an automatic promotion must not happen (the primary's own region still sees it writable, recently
    enough to be news), or None. An observation of another primary (before a failover) says nothing."""
    now = now or datetime.now(timezone.utc)
    region = policy.topology.primary.region
    seen = observations.get(region)
    if seen is None or seen.primary != policy.topology.primary.name:
        return None
    window = STALE_AFTER_PERIODS * viewpoint_period(policy)
    if seen.writable and now - seen.observed_at <= window:
        return (f"the primary's own region {region} saw primary {seen.primary} writable "
                f"{(now - seen.observed_at).total_seconds():.0f} s ago ({seen.observed_at.isoformat(timespec='seconds')},"
                f" within {STALE_AFTER_PERIODS} viewpoint periods): the monitor's path to {region} is cut (a "
                f"partition), the primary is not lost")
    return None


def describe_viewpoints(policy: Policy, observations: Mapping[str, ViewpointObservation | None], *,
                        now: datetime | None = None) -> list[str]:
    """One line per region: its latest observation, or its silence."""
    now = now or datetime.now(timezone.utc)
    window = STALE_AFTER_PERIODS * viewpoint_period(policy)
    lines = []
    for region in viewpoint_regions(policy):
        seen = observations.get(region)
        if seen is None:
            lines.append(f"{region}: no observation recorded (see {DAG_ID})")
        elif now - seen.observed_at > window:
            lines.append(f"{region}: silent for {(now - seen.observed_at).total_seconds():.0f} s (over "
                         f"{STALE_AFTER_PERIODS} periods: consistent with losing that region); last "
                         f"{seen.describe(now)}")
        else:
            lines.append(f"{region}: {seen.describe(now)}")
    return lines


def load_observations(regions: list[str], get: Callable[[str], str | None], *,
                      warn: Callable[[str], None]) -> dict[str, ViewpointObservation | None]:
    """Each region's latest recorded observation, `get` reading a Variable (None: never recorded, or
    unreadable, which `warn` says)."""
    found: dict[str, ViewpointObservation | None] = {}
    for region in regions:
        raw = get(viewpoint_variable(region))
        try:
            found[region] = ViewpointObservation.model_validate_json(raw) if raw else None
        except ValueError as exc:
            warn(f"Variable {viewpoint_variable(region)} does not hold an observation ({exc}): ignored")
            found[region] = None
    return found
