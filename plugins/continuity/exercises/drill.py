"""The monthly DR drill: rebuild the database from DR-region backups alone and measure RTO and RPO.

Marker rows are committed on the primary one after another (the marker stream, `validation.drill.
marker_stream` long); its end is the disaster instant. A scratch cluster is then rebuilt from what the DR
region's storage held at that instant alone (the newest base backup and the WAL stored by then: nothing
is flushed or shipped for the drill first), validated with the full expectation suite, and timed by phase.
RTO is drill start to a writable validated database; RPO is what a disaster at that instant would have
lost: the newest marker committed before it minus the newest marker the rebuild recovered. (Before, the
drill shipped its marker's WAL and rebuilt afterwards, so its RPO was 0 by construction.) The
application's objects are measured from the DR region's replicas: the rebuilt database's references must
all be there, and their RPO is the replication heartbeat's lag, never the database marker's.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Literal

import psycopg
from pydantic import BaseModel, ConfigDict

from continuity.storage.catalog import Catalog
from continuity.restore.expectations import validate_restored
from continuity.objects.audit import Consistency
from continuity.objects.store import ObjectStore
from continuity.policy.model import Policy
from continuity.reports import (Measurement, Objective, application_line, application_rto_objectives,
                                config_backup_age, object_rpo, objective, objectives_table, price_downtime,
                                rpo_measurements, rpo_objectives)
from continuity.restore.engine import (amcheck, check_object_references, replicated_through, restore_physical,
                                       scratch_cluster)

MARKER_TABLE = "continuity_drill_markers"


def _ensure_marker_table(conn: psycopg.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} (drill_id text PRIMARY KEY, "
                 f"committed_at timestamptz NOT NULL DEFAULT clock_timestamp())")


def commit_marker(app_conninfo: str, drill_id: str) -> datetime:
    """Commit one marker row; returns its commit time as the server saw it."""
    with psycopg.connect(app_conninfo, autocommit=True) as conn:
        _ensure_marker_table(conn)
        return conn.execute(f"INSERT INTO {MARKER_TABLE} (drill_id) VALUES (%s) RETURNING committed_at",
                            (drill_id,)).fetchone()[0]


REPORT_PREFIX = "reports/drill/"


class PitrMarkers(BaseModel):
    """Two marker rows around a recovery target: a point-in-time recovery to `target` must hold the
    first and not the second."""

    model_config = ConfigDict(extra="forbid")

    before: str
    before_at: datetime
    target: datetime
    after: str
    after_at: datetime


def commit_pitr_markers(app_conninfo: str, drill_id: str, *, sleep: Callable[[float], None] = time.sleep) -> PitrMarkers:
    """Commit a marker, wait, commit another; the target is between them, at a point that varies with the
    drill id (stable for one drill, so a rerun checks the same point)."""
    fraction = int(hashlib.sha256(drill_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF  # 0..1, from the id
    before = commit_marker(app_conninfo, f"{drill_id}:pitr-before")
    sleep(1.0)
    after = commit_marker(app_conninfo, f"{drill_id}:pitr-after")
    # Between 25% and 75% of the gap: clear of both commit records, which carry the commit time (a few
    # microseconds after the statement's clock_timestamp()).
    target = before + (after - before) * (0.25 + 0.5 * fraction)
    return PitrMarkers(before=f"{drill_id}:pitr-before", before_at=before, target=target,
                       after=f"{drill_id}:pitr-after", after_at=after)


class MarkerStream(BaseModel):
    """Markers committed one after another until the disaster instant. Their commit times are the database
    server's clock; `disaster_at` is the orchestrator's, the clock storage's manifests are stamped with."""

    model_config = ConfigDict(extra="forbid")

    prefix: str  # each marker's drill_id is the prefix and a sequence number
    count: int
    first_at: datetime
    last_at: datetime  # the newest commit before the disaster instant
    disaster_at: datetime


def commit_marker_stream(app_conninfo: str, drill_id: str, *, seconds: float, interval: float = 0.25,
                         clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> MarkerStream:
    """Commit a marker every `interval` for `seconds`, as an application writes on; the disaster instant is
    right after the last acknowledged one."""
    prefix = f"{drill_id}:stream-"
    committed: list[datetime] = []
    # Through the entry point (PgBouncer in transaction pooling): statements are not prepared, each may land
    # on another server connection.
    with psycopg.connect(app_conninfo, autocommit=True, prepare_threshold=None) as conn:
        _ensure_marker_table(conn)
        ends = clock() + seconds
        while not committed or clock() < ends:
            committed.append(conn.execute(f"INSERT INTO {MARKER_TABLE} (drill_id) VALUES (%s) RETURNING committed_at",
                                          (f"{prefix}{len(committed):06d}",)).fetchone()[0])
            sleep(interval)
    return MarkerStream(prefix=prefix, count=len(committed), first_at=committed[0], last_at=committed[-1],
                        disaster_at=datetime.now(timezone.utc))


def stream_rpo(stream: MarkerStream, *, newest_stream_marker: datetime | None, newest_marker: datetime | None,
               base_finished_at: datetime, location: str) -> tuple[float, bool, str]:
    """What a disaster at the stream's end would have lost: the newest marker committed then minus the newest
    one recovered (of this stream, else of any earlier drill, else the base backup's end). Returns the seconds,
    whether the newest marker was recovered, and the measurement's source sentence."""
    held = (f"marker stream of {stream.count} commits {stream.first_at.isoformat()} .. {stream.last_at.isoformat()}, "
            f"disaster instant {stream.disaster_at.isoformat()}; rebuilt from what location {location} held then")
    if newest_stream_marker is not None:
        recovered, what = newest_stream_marker, f"newest marker recovered committed {newest_stream_marker.isoformat()}"
    elif newest_marker is not None:
        recovered, what = newest_marker, (f"no marker of this stream recovered; the newest earlier marker "
                                          f"committed {newest_marker.isoformat()}")
    else:
        recovered, what = base_finished_at, (f"no marker recovered; counted from the base backup's end "
                                             f"{base_finished_at.isoformat()}")
    seconds = max(0.0, (stream.last_at - recovered).total_seconds())
    return seconds, recovered >= stream.last_at, f"{held}: {what}"


class PitrCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: datetime
    recovered_to: str  # what the restore was asked for: the target, or "latest"
    before_recovered: bool
    after_recovered: bool
    passed: bool
    seconds: float


def check_point_in_time(*, catalog: Catalog, location: str, markers: PitrMarkers, database: str,
                        report: Callable[[str], None], target_time: datetime | None,
                        scratch_prefix: str = "continuity-drill-pitr-") -> PitrCheck:
    """Recover `location`'s backups to `target_time` in a scratch cluster and look for the two markers:
    passed only when the one committed before the target is there and the one after is not."""
    started = time.monotonic()
    with scratch_cluster(initdb=False, prefix=scratch_prefix) as scratch:
        restore_physical(catalog=catalog, location=location, scratch=scratch, target_time=target_time, report=report)
        with scratch.connect(database, user=scratch.add_check_role()) as conn:
            found = {row[0] for row in conn.execute(f"SELECT drill_id FROM {MARKER_TABLE} WHERE drill_id IN (%s, %s)",
                                                    (markers.before, markers.after)).fetchall()}
    check = PitrCheck(target=markers.target, recovered_to=target_time.isoformat() if target_time else "latest",
                      before_recovered=markers.before in found, after_recovered=markers.after in found,
                      passed=markers.before in found and markers.after not in found,
                      seconds=round(time.monotonic() - started, 3))
    report(f"point-in-time recovery to {check.recovered_to}: marker before the target "
           f"{'recovered' if check.before_recovered else 'MISSING'}, marker after it "
           f"{'PRESENT (recovery went past the target)' if check.after_recovered else 'absent'}: "
           f"{'pass' if check.passed else 'FAIL'}")
    return check


class DrillStart(BaseModel):
    """What start_drill hands the later tasks: the drill's id, when it began, its marker stream up to the disaster
    instant, the point-in-time markers."""

    model_config = ConfigDict(extra="forbid")

    drill_id: str
    started_at: datetime
    database: str
    stream: MarkerStream
    pitr: PitrMarkers | None = None


class SwitchoverLeg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    to: str
    unavailability_seconds: float | None  # the entry point held, from pause to resume
    steps: dict[str, float | None]  # each failover step's seconds


class LiveSwitchoverResult(BaseModel):
    """The live switchover there and back: the outage clients saw and whether any commit was lost."""

    model_config = ConfigDict(extra="forbid")

    drill_id: str
    target: str
    legs: dict[str, SwitchoverLeg]
    acknowledged_commits: int
    failed_statements: int
    application_outage_seconds: float  # the longest gap between acknowledged commits
    lost_commits: int


class DrillResult(BaseModel):
    """A drill's report (JSON in storage, XCom): what was rebuilt, measured and checked. A drill whose
    rebuild failed has `error` and no measurements."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["drill"] = "drill"
    drill_id: str
    started_at: str
    success: bool
    failed_checks: list[str]
    error: str | None = None
    location: str | None = None
    base_backup: str | None = None
    marker_committed_at: str | None = None  # the newest marker committed before the disaster instant
    marker_recovered: bool | None = None  # was that newest marker recovered (RPO 0)
    disaster_at: str | None = None  # the instant whose storage the rebuild used
    rpo_source: str | None = None
    rto_seconds: float | None = None
    rpo_seconds: float | None = None
    phases: dict[str, float] = {}
    objectives: list[Objective] = []
    validated_against: str | None = None
    checks_passed: int = 0
    amcheck: str | None = None
    objects: list[Consistency] = []
    pitr: PitrCheck | None = None  # the point-in-time recovery check (markers around a target)
    application: dict[str, Any] | None = None  # read-only synthetic transactions on the rebuilt database
    downtime_seconds: float | None = None  # drill start until the slowest function was back
    downtime_cost: str = "not measured"


def run_drill(*, catalog: Catalog, policy: Policy, drill_id: str, started_at: datetime, stream: MarkerStream,
              database: str, report: Callable[[str], None], scratch_prefix: str = "continuity-drill-",
              object_replicas: Mapping[str, tuple[ObjectStore, str]] | None = None,
              pitr: PitrMarkers | None = None,
              application_check: Callable[[str], Any] | None = None) -> DrillResult:
    """Rebuild from what the DR region's storage held at the marker stream's disaster instant alone, and
    measure; RPO is what that disaster would have lost. `object_replicas`: each object category's replica in
    the DR region (see `objects.replicas_in`): the rebuilt database's references are checked against it, and
    the objects' RPO comes from its heartbeat lag and that check."""
    location = next(loc.name for loc in policy.storage.locations if loc.region == policy.topology.dr_region)
    with scratch_cluster(initdb=False, prefix=scratch_prefix) as scratch:
        base = restore_physical(catalog=catalog, location=location, scratch=scratch, report=report,
                                stored_by=stream.disaster_at)
        started = time.monotonic()
        reader = scratch.add_check_role()  # never a superuser over the application's objects
        with scratch.connect(database, user=reader) as conn:
            # The table itself may be younger than what storage held at the disaster instant.
            newest_streamed = newest_any = None
            if conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MARKER_TABLE,)).fetchone()[0]:
                newest_streamed = conn.execute(f"SELECT max(committed_at) FROM {MARKER_TABLE} WHERE drill_id LIKE %s",
                                               (stream.prefix + "%",)).fetchone()[0]
                newest_any = conn.execute(f"SELECT max(committed_at) FROM {MARKER_TABLE}").fetchone()[0]
        logical = catalog.latest("logical", location=location, database=database)
        checks = validate_restored(manifest=logical, socket_dir=scratch.cluster.socket_dir, port=scratch.port,
                                   database=database, tables=None, exact=False, user=reader) if logical else []
        amcheck_ok, amcheck_detail = amcheck(scratch)
        report(amcheck_detail)
        consistency = {name: check for name, (replica, _) in (object_replicas or {}).items()
                       if (check := check_object_references(policy, name, replica, scratch, database,
                                                            report=report, user=reader)) is not None}
        scratch.timings["validation"] = time.monotonic() - started
        writable_at = datetime.now(timezone.utc)
        application = None
        if application_check is not None:  # each function's RTO: until its transaction succeeds there
            started = time.monotonic()
            # As the application's own role: a physical copy keeps the source's roles and grants.
            probe = application_check(scratch.conninfo(database, user="app"),
                                      uploaded_before=replicated_through(consistency.values()))
            application = probe.model_dump(mode="json")
            report(probe.summary())
            scratch.timings["application"] = time.monotonic() - started
        timings = dict(scratch.timings)
    rto = (writable_at - started_at).total_seconds()
    rpo, marker_recovered, rpo_source = stream_rpo(stream, newest_stream_marker=newest_streamed,
                                                  newest_marker=newest_any, base_finished_at=base.finished_at,
                                                  location=location)
    rebuilt = f"database rebuilt in location {location} from base backup {base.backup_id} + WAL"
    objectives = application_rto_objectives(policy, started_at=started_at, probe=application, fallback_seconds=rto,
                                            fallback_source=rebuilt)
    tier = policy.tiers["tier_1_critical"]
    objectives.append(objective("RTO tier_1_critical", measured_seconds=rto, target=tier.target,
                                maximum=tier.maximum, source=rebuilt))
    newest_config = catalog.latest("config", location=location)
    database_measurement = Measurement(seconds=rpo, source=rpo_source)
    measurements = rpo_measurements(
        policy, database=database_measurement,
        config=config_backup_age(newest_config, location=location, at=started_at) if newest_config else None,
        objects={name: object_rpo(replica, consistency.get(name)) for name, replica in (object_replicas or {}).items()})
    objectives += rpo_objectives(policy, measurements)
    # After RTO is measured: the point-in-time check is a second rebuild, not part of the recovery.
    pitr_check = check_point_in_time(catalog=catalog, location=location, markers=pitr, database=database,
                                     report=report, target_time=pitr.target,
                                     scratch_prefix=f"{scratch_prefix}pitr-") if pitr else None
    failed = [c for c in checks if not c.success]
    downtime_seconds, downtime = price_downtime(policy, objectives)
    object_failures = [f"{c.category}: {len(c.missing)} objects referenced by the rebuilt database are missing from "
                       f"{c.replica}, {len(c.mismatched)} differ" for c in consistency.values() if not c.consistent]
    return DrillResult(
        drill_id=drill_id, started_at=started_at.isoformat(), location=location, base_backup=base.backup_id,
        marker_committed_at=stream.last_at.isoformat(), marker_recovered=marker_recovered,
        disaster_at=stream.disaster_at.isoformat(), rpo_source=rpo_source,
        rto_seconds=round(rto, 3), rpo_seconds=round(rpo, 3), phases={k: round(v, 3) for k, v in timings.items()},
        objectives=objectives, validated_against=logical.backup_id if logical else None,
        checks_passed=len(checks) - len(failed), amcheck=amcheck_detail,
        failed_checks=[f"{c.table}: {c.description}" for c in failed] + ([] if amcheck_ok else [amcheck_detail])
        + object_failures
        + ([f"point-in-time recovery to {pitr_check.target.isoformat()}: marker before the target "
             f"{'recovered' if pitr_check.before_recovered else 'missing'}, marker after it "
             f"{'present' if pitr_check.after_recovered else 'absent'}"] if pitr_check and not pitr_check.passed else []),
        success=not failed and bool(checks) and amcheck_ok and not object_failures
        and (pitr_check is None or pitr_check.passed),
        objects=list(consistency.values()), pitr=pitr_check, application=application,
        downtime_seconds=downtime_seconds, downtime_cost=downtime,
    )


def failure_result(*, drill_id: str, started_at: datetime, error: str) -> DrillResult:
    """The report of a drill whose rebuild itself failed: the measured RTO is 'never'."""
    return DrillResult(drill_id=drill_id, started_at=started_at.isoformat(), success=False, error=error,
                       failed_checks=[error])


def render_markdown(result: DrillResult) -> str:
    title = f"# DR drill {result.drill_id} ({result.started_at}): {'PASS' if result.success else 'FAIL'}"
    if result.error is not None:
        return f"{title}\n\nThe rebuild failed, so the database could not be recovered from the DR region:\n\n> {result.error}\n"
    lines = [
        title, "",
        f"- rebuilt from location {result.location}: base backup `{result.base_backup}` + WAL",
        f"- RTO {result.rto_seconds} s: " + ", ".join(f"{k} {v} s" for k, v in result.phases.items()),
        f"- RPO {result.rpo_seconds} s, what a disaster at {result.disaster_at} would have lost: "
        + (result.rpo_source or f"drill marker committed {result.marker_committed_at} "
                                f"{'recovered' if result.marker_recovered else 'LOST'}"),
        f"- validated against `{result.validated_against}`: {result.checks_passed} checks passed; {result.amcheck}",
        *([f"- point-in-time recovery to {result.pitr.target.isoformat()} (a second rebuild, {result.pitr.seconds} s): "
           f"marker before the target {'recovered' if result.pitr.before_recovered else 'MISSING'}, marker after it "
           f"{'PRESENT' if result.pitr.after_recovered else 'absent'}: {'pass' if result.pitr.passed else 'FAIL'}"]
          if result.pitr else ["- point-in-time recovery: not measured"]),
        application_line(result.application),
        f"- downtime until every function was back: {result.downtime_seconds} s, {result.downtime_cost}"
        if result.downtime_seconds is not None else f"- downtime: {result.downtime_cost}",
    ]
    for check in result.objects:
        lines.append(f"- objects {check.category}: {check.present} of {check.referenced} referenced by the rebuilt "
                     f"database are in {check.replica}; {len(check.missing)} missing, {len(check.mismatched)} "
                     f"different, {check.orphans} not referenced by any row")
    for failed in result.failed_checks:
        lines.append(f"- **failed**: {failed}")
    lines += ["", *objectives_table(result.objectives)]
    return "\n".join(lines) + "\n"
