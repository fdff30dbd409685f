"""The quarterly region-loss exercise: lose the whole primary region, recover in the DR region, measure
every business function, then rebuild the lost region as standbys and switch back.

The loss is real: every process of the region stops without a clean handover (application instances,
Redis, PostgreSQL nodes, immediate shutdown) and its object storage refuses every request
(`ServiceControl.isolate_region`). Recovery is dr_failover's steps in failover mode with the lost
nodes left alone, the DR application and Redis started, the DR site validated by every function's
synthetic transaction. A user keeps writing annotations through the application the whole time
(`loadgen.ApplicationWriter`): every write it was told succeeded must still be there at the end.

Each function's RTO runs from the moment the region was lost until its synthetic transaction succeeded
in the DR region; each RPO comes from its data categories (a marker row committed just before the loss
and the writer's acknowledged writes for database data, the DR replica's heartbeat and the recovered
database's references for objects, the newest config backup's age for configuration). Nothing here
imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict

from continuity.exercises.drill import MARKER_TABLE, commit_marker
from continuity.failover.steps import ReplicationGroup
from continuity.objects.audit import Consistency
from continuity.objects.restore import FailBack
from continuity.policy.model import Policy
from continuity.reports import (Measurement, Objective, application_line, application_rto_objectives,
                                failing_objectives, objectives_table, rpo_objectives)

REPORT_PREFIX = "reports/region-recovery/"


class FoundState(BaseModel):
    """What the exercise must leave as it found: who is primary, who streams from it, where the
    application serves."""

    model_config = ConfigDict(extra="forbid")

    primary: str | None
    streaming: list[str]
    synchronous: list[str]
    serving_regions: list[str]


def observe(cluster: ReplicationGroup, services: Any, regions: list[str]) -> FoundState:
    writable = cluster.writable_nodes()
    primary = writable[0] if len(writable) == 1 else None
    rows = cluster.nodes[primary].replication() if primary else []
    return FoundState(primary=primary,
                      streaming=sorted(r.application_name for r in rows if r.state == "streaming"),
                      synchronous=sorted(r.application_name for r in rows if r.sync_state in ("sync", "quorum")),
                      serving_regions=sorted(r for r in regions if any(services.running(r).values())))


def differences(found: FoundState, now: FoundState) -> list[str]:
    """How `now` differs from `found`, one sentence each (empty: left as found)."""
    said = []
    for field in FoundState.model_fields:
        before, after = getattr(found, field), getattr(now, field)
        if before != after:
            said.append(f"{field}: found {before or 'none'}, now {after or 'none'}")
    return said


class ExerciseStart(BaseModel):
    """What the first task hands the others."""

    model_config = ConfigDict(extra="forbid")

    exercise_id: str
    started_at: datetime
    region: str  # the region lost
    recovery_region: str
    original_primary: str
    target: str  # the standby promoted in the recovery region
    lost_nodes: list[str]
    found: FoundState
    database: str


LATE_START = timedelta(hours=1)


def late_start(*, scheduled: bool, due: datetime | None, now: datetime) -> str | None:
    """Why a scheduled exercise must not start now, or None. A scheduler started for the first time runs the
    newest missed interval at once; losing a region then, next to the first backups, would be a surprise,
    not an exercise. A run triggered by hand always starts."""
    if not scheduled or due is None or now - due <= LATE_START:
        return None
    return (f"scheduled for {due.isoformat()}, now {now - due} late: a region-loss exercise never starts late; "
            f"the next one runs on schedule, or trigger it now by hand")


class RegionReturn(BaseModel):
    """What to do when the lost region comes back, from which nodes accept writes then."""

    action: Literal["rebuild", "nothing", "restart_as_found", "resolve_by_hand"]
    reason: str


def region_return(start: ExerciseStart, writable: list[str]) -> RegionReturn:
    """The recovered primary alone writable: rebuild the region's nodes as its standbys. The original primary
    alone: the region was never lost. None: the recovery never promoted, so the region's nodes come back as
    they were. Anything else (two writers, or a third node) is for a person: nothing is touched."""
    if writable == [start.target]:
        return RegionReturn(action="rebuild", reason=f"{start.target} is the only primary: rebuilding "
                                                     f"{', '.join(start.lost_nodes)} as its standbys")
    if writable == [start.original_primary]:
        return RegionReturn(action="nothing", reason=f"{start.original_primary} is still the primary: the region "
                                                     f"was never lost, nothing to rebuild")
    if not writable:
        return RegionReturn(action="restart_as_found",
                            reason=f"the recovery did not promote {start.target}: starting "
                                   f"{', '.join(start.lost_nodes)} as they were")
    return RegionReturn(action="resolve_by_hand", reason=f"writable nodes {', '.join(writable)}: expected only "
                                                         f"{start.target}; resolve by hand before switching back")


def plan_exercise(policy: Policy, *, exercise_id: str, found: FoundState, database: str,
                  region: str | None = None) -> ExerciseStart:
    """Check the exercise can run (the sandbox as a healthy starting point), naming what is wrong first."""
    topology = policy.topology
    region = region or topology.primary_region
    primary = found.primary
    if primary is None:
        raise ValueError("no single writable primary: the exercise starts only from a healthy cluster. "
                         "HINT: `continuity sandbox status` shows each node's role")
    if topology.node(primary).region != region:
        raise ValueError(f"the primary {primary} is in {topology.node(primary).region}, not in {region}, the region "
                         f"to lose: the exercise loses the primary's region. HINT: switch back first")
    recovery = topology.dr_region if region != topology.dr_region else topology.primary_region
    candidates = [n.name for n in topology.nodes if n.region == recovery and n.name in found.streaming]
    if not candidates:
        raise ValueError(f"no standby in {recovery} streams from {primary}: nothing to recover on. "
                         f"HINT: `continuity sandbox status`")
    if region not in found.serving_regions:
        raise ValueError(f"the application does not serve in {region}: the exercise starts from the normal "
                         f"topology (serving: {', '.join(found.serving_regions) or 'nowhere'})")
    return ExerciseStart(exercise_id=exercise_id, started_at=datetime.now(timezone.utc), region=region,
                         recovery_region=recovery, original_primary=primary, target=candidates[0],
                         lost_nodes=[n.name for n in topology.nodes if n.region == region], found=found,
                         database=database)


class WriterRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    acknowledged: int
    ids: list[int]
    lost: list[int]
    failed_requests: int
    outage_seconds: float  # the longest gap between acknowledged writes
    last_errors: list[str]


class SwitchBack(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float
    unavailability_seconds: float | None
    fail_back: list[FailBack]
    missing_home: list[str]


class RecoveryResult(BaseModel):
    """The region-loss exercise's report: what was lost, how recovery went, each function measured."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["region-recovery"] = "region-recovery"
    exercise_id: str
    region: str
    recovery_region: str
    target: str
    started_at: datetime
    lost_at: datetime | None = None
    lost: list[str] = []
    recovered_at: datetime | None = None
    marker_committed_at: datetime | None = None
    marker_recovered: bool | None = None
    data_loss_bytes: int | None = None
    failover_steps: dict[str, float | None] = {}
    application: dict[str, Any] | None = None
    writer: WriterRecord | None = None
    objects: list[Consistency] = []
    objectives: list[Objective] = []
    downtime_seconds: float | None = None  # the loss until the slowest function was back
    downtime_cost: str = "not measured"
    error: str | None = None
    # After the region is back: its rebuild, the switch back and whether all is as found.
    rebuilt: list[str] = []
    switch_back_seconds: float | None = None
    switch_back_outage_seconds: float | None = None
    left_as_found: bool | None = None
    differences: list[str] = []
    writes_lost_by_the_end: list[int] | None = None
    fail_back: list[FailBack] = []  # objects the recovery region wrote, copied home before and after the switch
    missing_home: list[str] = []  # objects named by rows written since the loss, not in their home bucket

    @property
    def failures(self) -> list[str]:
        said = [self.error] if self.error else []
        said += [f"{o} past its maximum" for o in failing_objectives(self.objectives)]
        said += [f"{o.objective} not measured: the function was not shown to work in {self.recovery_region}"
                 for o in self.objectives if o.objective.startswith("RTO ") and o.within_maximum is None]
        if self.writer and self.writer.lost:
            said.append(f"{len(self.writer.lost)} acknowledged writes lost by the recovery "
                        f"(first: {self.writer.lost[:5]})")
        if self.writes_lost_by_the_end:
            said.append(f"{len(self.writes_lost_by_the_end)} acknowledged writes missing after the switch back")
        if self.marker_recovered is False:
            said.append(f"the marker committed at {self.marker_committed_at} before the loss was not recovered")
        for copied in self.fail_back:
            if copied.failed:
                said.append(f"{len(copied.failed)} objects of {copied.category} written in {self.recovery_region} "
                            f"could not be copied home (first: {copied.failed[0]})")
        if self.missing_home:
            said.append(f"{len(self.missing_home)} objects named by rows written since the loss are missing from their "
                        f"home bucket after the switch back (first: {', '.join(self.missing_home[:3])})")
        if self.left_as_found is False:
            said.append("the sandbox was not left as found: " + "; ".join(self.differences))
        return said


def marker_recovered(conninfo: str, marker: str) -> tuple[bool, datetime | None]:
    """Whether the marker row is in the database behind `conninfo`, and the newest marker there."""
    with psycopg.connect(conninfo, prepare_threshold=None, connect_timeout=10) as conn:
        found = conn.execute(f"SELECT 1 FROM {MARKER_TABLE} WHERE drill_id = %s", (marker,)).fetchone()
        newest = conn.execute(f"SELECT max(committed_at) FROM {MARKER_TABLE}").fetchone()[0]
    return found is not None, newest


def database_rpo(*, marker_at: datetime, marker_found: bool, newest_marker: datetime | None,
                 writer: WriterRecord, acknowledged_at: Mapping[int, float]) -> Measurement:
    """Database data's RPO: 0 when the marker committed just before the loss and every acknowledged write
    are there; otherwise the span of what was lost (the marker's age over the newest recovered one, or
    the lost writes' span before the newest recovered write)."""
    lost = 0.0
    if not marker_found:
        lost = max(lost, (marker_at - newest_marker).total_seconds() if newest_marker else float("inf"))
    if writer.lost:
        kept = [t for i, t in acknowledged_at.items() if i not in set(writer.lost)]
        lost_times = [acknowledged_at[i] for i in writer.lost if i in acknowledged_at]
        lost = max(lost, max(lost_times) - (max((t for t in kept if t < min(lost_times)), default=min(lost_times))))
    source = (f"marker committed {marker_at.isoformat()} before the loss "
              f"{'recovered' if marker_found else 'LOST'}; {writer.acknowledged} writes acknowledged through the "
              f"application, {len(writer.lost)} lost")
    return Measurement(seconds=round(lost, 3), source=source)


def objectives_for(policy: Policy, *, lost_at: datetime, probe: Mapping[str, Any] | None,
                   measurements: Mapping[str, Measurement]) -> list[Objective]:
    """Each business function's RTO (the loss until its synthetic transaction succeeded in the recovery
    region; a function whose transaction did not run or failed is named) and every RPO."""
    objectives = application_rto_objectives(policy, started_at=lost_at, probe=probe, fallback_seconds=None,
                                            fallback_source="no synthetic transaction ran in the recovery region")
    return objectives + rpo_objectives(policy, measurements)


def render_markdown(result: RecoveryResult) -> str:
    failures = result.failures
    title = (f"# Region-loss exercise {result.exercise_id}: {result.region} lost, recovered in "
             f"{result.recovery_region}: {'FAIL' if failures else 'PASS'}")
    lines = [title, ""]
    if result.lost_at:
        lines.append(f"- lost at {result.lost_at.isoformat()}: {', '.join(result.lost) or 'nothing was running'}")
    if result.recovered_at:
        steps = ", ".join(f"{k} {v} s" for k, v in result.failover_steps.items() if v is not None)
        after = f" {(result.recovered_at - result.lost_at).total_seconds():.1f} s after the loss" if result.lost_at else ""
        lines.append(f"- {result.target} promoted and the DR site validated{after} ({steps or 'steps not timed'}); "
                     f"data loss estimate {result.data_loss_bytes} bytes")
    lines.append(application_line(result.application))
    lines.append("- downtime until every function was back: "
                 + (f"{result.downtime_seconds} s, {result.downtime_cost}" if result.downtime_seconds is not None
                    else result.downtime_cost))
    if result.writer:
        w = result.writer
        lines.append(f"- writer through the application: {w.acknowledged} annotations acknowledged, {len(w.lost)} "
                     f"lost, {w.failed_requests} failed requests, longest gap {w.outage_seconds} s")
    for check in result.objects:
        lines.append(f"- objects {check.category}: {check.present} of {check.referenced} referenced by the recovered "
                     f"database are in {check.replica}; {len(check.missing)} missing, {len(check.pending)} not yet "
                     f"due for a copy")
    if result.left_as_found is not None:
        lines.append(f"- {result.region} rebuilt as standbys ({', '.join(result.rebuilt) or 'none'}), switched back in "
                     f"{result.switch_back_seconds} s (entry point held {result.switch_back_outage_seconds} s): "
                     + ("left as found" if result.left_as_found else "NOT as found: " + "; ".join(result.differences)))
        for copied in result.fail_back:
            lines.append(f"- objects {copied.category} written in {result.recovery_region} while it served: "
                         f"{len(copied.copied)} copied home to {copied.home} (SHA-256 verified), {copied.already_home} "
                         f"already there, {len(copied.failed)} failed")
    else:
        lines.append("- rebuild and switch back: not measured")
    lines += [f"- **failed**: {f}" for f in failures]
    lines += ["", *objectives_table(result.objectives)]
    return "\n".join(lines) + "\n"


def commit_loss_marker(app_conninfo: str, exercise_id: str) -> tuple[str, datetime]:
    marker = f"{exercise_id}:before-loss"
    return marker, commit_marker(app_conninfo, marker)


def writer_record(writer: Any, lost: list[int]) -> WriterRecord:
    return WriterRecord(acknowledged=len(writer.acknowledged), ids=writer.ids, lost=lost,
                        failed_requests=len(writer.errors), outage_seconds=round(writer.longest_gap, 3),
                        last_errors=writer.errors[-5:])

