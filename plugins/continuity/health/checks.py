"""Health checks of the DR topology and the requirements' weighted failure score.

Each check returns `Check`s whose `reason` is one plain sentence saying what was measured against
what limit (Patroni-style), so the task log reads as an explanation and tests can assert on it.
Components carry the requirements' weights (database 3, application 2, network 2, storage 1);
`configuration` and `archiving` problems fail the run but do not count toward a disaster.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

from continuity.policy.model import Policy, Severity, format_duration
from continuity.storage.degraded import DegradedCopy
from continuity.postgres.node import NodeUnreachable, PostgresNode, ReplicationSlot, StandbyReplication

Component = Literal["database", "application", "network", "storage", "configuration", "archiving"]


@dataclass(frozen=True)
class Check:
    component: Component
    subject: str
    healthy: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    # A failing check that must reach a person by itself (not only as a red run): the incident's severity.
    alert: Severity | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**data)


@dataclass(frozen=True)
class Assessment:
    score: int
    threshold: int
    failing: list[Check]
    checks: list[Check]

    @property
    def disaster(self) -> bool:
        return self.score >= self.threshold

    @property
    def healthy(self) -> bool:
        return not self.failing

    def summary(self) -> str:
        if self.healthy:
            return f"all {len(self.checks)} checks healthy (failure score 0 of threshold {self.threshold})"
        verdict = "DISASTER THRESHOLD REACHED" if self.disaster else "degraded"
        problems = "; ".join(f"{c.subject}: {c.reason}" for c in self.failing)
        return f"{verdict}: failure score {self.score} (threshold {self.threshold}); {len(self.failing)} failing check(s): {problems}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": self.score, "threshold": self.threshold, "disaster": self.disaster,
            "healthy": self.healthy, "summary": self.summary(),
            "failing": [c.to_dict() for c in self.failing],
        }


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / 2**20:.1f} MiB"


def lag_verdict(row: StandbyReplication | None, *, standby: str, max_lag_bytes: int,
                max_lag_seconds: float | None = None) -> tuple[bool, str]:
    """Is this standby streaming within the limits? A reason sentence either way."""
    if row is None:
        return False, f"standby {standby} is not connected to the primary (absent from pg_stat_replication)"
    if row.state != "streaming":
        return False, f"standby {standby} is in state {row.state!r}, not streaming"
    if row.lag_bytes is None or row.lag_bytes > max_lag_bytes:
        return False, f"standby {standby} is {_mib(row.lag_bytes)} behind, over the {_mib(max_lag_bytes)} limit"
    seconds = row.replay_lag_seconds or 0.0
    if max_lag_seconds is not None and seconds > max_lag_seconds:
        return False, f"standby {standby} replays {seconds:.1f}s behind, over the {max_lag_seconds:.0f}s limit"
    limit = f" and {max_lag_seconds:.0f}s" if max_lag_seconds is not None else ""
    return True, (f"standby {standby} is streaming ({row.sync_state}) {_mib(row.lag_bytes)} and {seconds:.1f}s behind, "
                  f"within the {_mib(max_lag_bytes)}{limit} limit")


def _strictest_rpo(policy: Policy) -> tuple[str, float]:
    name, category = min(policy.data_categories.items(), key=lambda item: item[1].rpo.target)
    return name, category.rpo.target.total_seconds()


def check_primary(policy: Policy, primary: PostgresNode) -> list[Check]:
    subject = f"primary {primary.name}"
    try:
        in_recovery = primary.is_in_recovery()
        timeline = primary.timeline()
    except NodeUnreachable as exc:
        return [Check("database", subject, False, str(exc))]
    if in_recovery:
        return [Check("database", subject, False, f"node {primary.name} is in recovery: it cannot accept writes",
                      {"timeline": timeline})]
    return [Check("database", subject, True, f"primary {primary.name} is up and accepting writes on timeline {timeline}",
                  {"timeline": timeline})]


def check_standbys(policy: Policy, primary: PostgresNode, standbys: Mapping[str, PostgresNode]) -> list[Check]:
    """Each standby: reachable, in recovery, streaming from the primary within lag and RPO limits."""
    max_bytes = policy.health_monitor.max_lag_bytes
    category, rpo_seconds = _strictest_rpo(policy)
    try:
        rows = {r.application_name: r for r in primary.replication()}
    except NodeUnreachable:
        rows = None
    checks: list[Check] = []
    for name, node in standbys.items():
        subject = f"standby {name}"
        try:
            in_recovery = node.is_in_recovery()
            receiver = node.wal_receiver()
        except NodeUnreachable as exc:
            checks.append(Check("network", subject, False, str(exc)))
            continue
        if not in_recovery:
            checks.append(Check("network", subject, False,
                                f"node {name} is not in recovery: a second writable node besides the primary"))
            continue
        if rows is None:
            status = receiver.status if receiver else "no WAL receiver"
            checks.append(Check("network", subject, False,
                                f"standby {name} cannot be compared with the unreachable primary (WAL receiver: {status})"))
            continue
        ok, reason = lag_verdict(rows.get(name), standby=name, max_lag_bytes=max_bytes, max_lag_seconds=rpo_seconds)
        if ok:
            reason += f" (RPO target of {category}: {format_duration(policy.data_categories[category].rpo.target)})"
        row = rows.get(name)
        checks.append(Check("network", subject, ok, reason, {
            "lag_bytes": row.lag_bytes if row else None,
            "replay_lag_seconds": row.replay_lag_seconds if row else None,
            "sync_state": row.sync_state if row else None,
        }))
    return checks


def check_archiver(policy: Policy, primary: PostgresNode, spool_dir: Path | None) -> list[Check]:
    subject = f"WAL archiver on {primary.name}"
    try:
        archiver = primary.archiver()
    except NodeUnreachable as exc:
        return [Check("archiving", subject, False, str(exc))]
    checks: list[Check] = []
    if archiver.failing:
        checks.append(Check("archiving", subject, False,
                            f"archive_command is failing: last failure on {archiver.last_failed_wal} at "
                            f"{archiver.last_failed_time:%Y-%m-%d %H:%M:%S %Z} ({archiver.failed_count} failures in total)"))
    else:
        last = archiver.last_archived_wal or "nothing yet"
        checks.append(Check("archiving", subject, True,
                            f"archiver healthy: {archiver.archived_count} files archived, last {last}, no failure since"))
    if spool_dir is not None:
        limit = policy.health_monitor.max_spool_files
        try:
            waiting = [p for p in spool_dir.iterdir() if not p.name.startswith(".")]
        except OSError as exc:
            checks.append(Check("archiving", f"WAL spool {spool_dir}", False, f"cannot list the WAL spool: {exc.strerror}"))
        else:
            ok = len(waiting) <= limit
            verdict = "within" if ok else "over"
            checks.append(Check("archiving", f"WAL spool {spool_dir}", ok,
                                f"{len(waiting)} files wait in the WAL spool, {verdict} the limit of {limit}",
                                {"files": len(waiting)}))
    return checks


def check_entry_point(entry: PostgresNode) -> list[Check]:
    subject = f"application entry point {entry.name}"
    try:
        in_recovery = entry.is_in_recovery()
    except NodeUnreachable as exc:
        return [Check("application", subject, False, str(exc))]
    if in_recovery:
        return [Check("application", subject, False, f"{entry.name} leads to a node in recovery: applications cannot write")]
    return [Check("application", subject, True, f"{entry.name} answers and leads to a writable primary")]


def check_commit_latency(policy: Policy, entry: PostgresNode) -> list[Check]:
    """One commit through the entry point against health_monitor.max_commit_latency: green while the synchronous
    standbys acknowledge in time; failing (database) when commits wait on standbys that do not answer."""
    limit = policy.health_monitor.max_commit_latency.total_seconds()
    subject = f"commit latency through {entry.name}"
    try:
        seconds, cut = entry.commit_seconds(timeout=limit)
    except NodeUnreachable as exc:
        return [Check("database", subject, False, str(exc))]
    except Exception as exc:  # a refused write (read-only, permissions) is the finding
        return [Check("database", subject, False, f"a commit through {entry.name} failed: {type(exc).__name__}: "
                                                  f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")]
    details = {"seconds": round(seconds, 3), "limit_seconds": limit}
    if cut is not None or seconds > limit:
        return [Check("database", subject, False,
                      f"a commit through {entry.name} waited {seconds:.1f}s, over the limit of {limit:g}s "
                      f"(health_monitor.max_commit_latency)" + (f": {cut}" if cut else "")
                      + "; every application write waits as long. HINT: a synchronous standby the primary waits "
                        "for is down or far behind (see the standby checks); synchronous_standby_names should let "
                        "commits go on with one of them lost ('ANY 1 (...)', topology.synchronous_quorum)", details)]
    return [Check("database", subject, True,
                  f"a commit through {entry.name} took {seconds * 1000:.0f} ms, within {limit:g}s", details)]


def check_application(probe: Any) -> list[Check]:
    """A probe round (continuity.health.probes.ApplicationProbe) as checks: each instance, each business function."""
    checks = [Check("application", f"application instance {i.instance or i.url}", i.ok,
                    f"instance {i.url} in {probe.region}: {i.reason}") for i in probe.instances]
    for t in probe.transactions:
        if t.ok is None:
            continue
        checks.append(Check("application", f"function {t.function}", bool(t.ok),
                            f"{t.function} in {probe.region}: {t.transaction} "
                            + (f"succeeded in {t.seconds:.2f}s ({t.reason})" if t.ok else f"FAILED: {t.reason}"),
                            {"seconds": t.seconds}))
    return checks


def check_storage(policy: Policy, probe: Callable[[str], None]) -> list[Check]:
    """`probe(location_name)` raises when the location is unreachable (S3 head_bucket, file access)."""
    checks: list[Check] = []
    for location in policy.storage.locations:
        where = location.bucket if location.kind == "s3" else location.path
        subject = f"storage {location.name}"
        try:
            probe(location.name)
        except Exception as exc:  # any failure to reach storage is the finding itself
            # The storage weight only counts for locations a backup must reach.
            checks.append(Check("storage" if location.required else "configuration", subject, False,
                                f"location {location.name} ({location.kind} {where}, {location.region}) is unreachable: "
                                f"{type(exc).__name__}: {exc}"))
        else:
            checks.append(Check("storage", subject, True,
                                f"location {location.name} ({location.kind} {where}, {location.region}) is reachable"))
    return checks


def check_degraded(policy: Policy, owed: Sequence[DegradedCopy], unlisted: Mapping[str, str], *,
                   now: datetime | None = None) -> list[Check]:
    """Per required location: the backups it is missing (stored elsewhere while it did not answer, owed by the
    catch-up). Failing while any are owed; a critical alarm once the oldest is older than storage.max_degraded."""
    now = now or datetime.now(timezone.utc)
    bound = policy.storage.max_degraded
    checks: list[Check] = []
    for location in policy.storage.locations:
        if not location.required:
            continue
        mine = [c for c in owed if c.missing == location.name]
        subject = f"degraded backups of {location.name}"
        if not mine:
            reason = (f"location {location.name} holds every backup the other locations know of"
                      + (f" (markers unreadable in {', '.join(sorted(unlisted))})" if unlisted else ""))
            checks.append(Check("storage", subject, True, reason, {"owed": 0}))
            continue
        oldest = min(c.since for c in mine)
        age = now - oldest
        details = {"owed": len(mine), "oldest_since": oldest.isoformat(), "age_seconds": int(age.total_seconds()),
                   "bound_seconds": int(bound.total_seconds()),
                   "kinds": sorted({c.kind for c in mine}), "last_reason": mine[-1].reason}
        kinds = "/".join(details["kinds"])
        age_text = format_duration(timedelta(seconds=int(age.total_seconds())))
        if age > bound:
            checks.append(Check("storage", subject, False,
                                f"location {location.name} has been missing {len(mine)} {kinds} backups for {age_text}, "
                                f"over storage.max_degraded of {format_duration(bound)}: protection rests on fewer "
                                f"regions than the policy requires. HINT: bring {location.name} back (the catch-up of "
                                f"dr_wal_archive copies them within the hour) or run `continuity backups catch-up`",
                                details, alert="critical"))
        else:
            checks.append(Check("storage", subject, False,
                                f"location {location.name} is missing {len(mine)} {kinds} backups since {age_text} ago "
                                f"(kept in the other locations; the catch-up copies them once it answers; critical "
                                f"after storage.max_degraded of {format_duration(bound)})", details))
    return checks


def check_configuration(policy: Policy, primary: PostgresNode) -> list[Check]:
    """Configuration drift: the primary's replication settings and slots against the policy."""
    subject = f"configuration of {primary.name}"
    monitor = policy.health_monitor
    try:
        settings = primary.settings([*monitor.required_settings, "max_wal_senders", "synchronous_standby_names",
                                     "max_slot_wal_keep_size"])
        slots = {s.slot_name: s for s in primary.replication_slots()}
    except NodeUnreachable as exc:
        return [Check("configuration", subject, False, str(exc))]
    checks: list[Check] = []
    for name, expected in monitor.required_settings.items():
        found = settings.get(name)
        ok = found == expected
        checks.append(Check("configuration", f"{subject}: {name}", ok,
                            f"{name} is {found!r}" + (" as the policy requires" if ok else f", the policy requires {expected!r}")))
    senders = int(settings.get("max_wal_senders", "0"))
    checks.append(Check("configuration", f"{subject}: max_wal_senders", senders >= monitor.min_wal_senders,
                        f"max_wal_senders is {senders}, the policy requires at least {monitor.min_wal_senders}"))
    bound = settings.get("max_slot_wal_keep_size")
    wanted = monitor.max_slot_wal_keep_setting
    checks.append(Check("configuration", f"{subject}: max_slot_wal_keep_size", bound == wanted,
                        f"max_slot_wal_keep_size is {_megabytes(bound)} as the policy requires" if bound == wanted else
                        f"max_slot_wal_keep_size is {_megabytes(bound)}, the policy requires {wanted}MB: "
                        + ("a stopped standby's slot can fill the primary's disk" if bound == "-1" else
                           "slots may hold a different amount of WAL than the policy's alerts assume")
                        + f". HINT: ALTER SYSTEM SET max_slot_wal_keep_size = '{wanted}MB'; SELECT pg_reload_conf()"))
    sync_names = settings.get("synchronous_standby_names", "")
    for node in policy.topology.standbys:
        if node.synchronous:
            named = node.name in _standby_names(sync_names)
            checks.append(Check("configuration", f"{subject}: synchronous_standby_names", named,
                                f"synchronous_standby_names is {sync_names!r}, which "
                                + ("names" if named else "does not name") + f" the synchronous standby {node.name}"))
        slot = slots.get(node.name)
        ok = slot is not None and slot.active
        state = "missing" if slot is None else ("active" if slot.active else "inactive")
        checks.append(Check("configuration", f"{subject}: slot {node.name}", ok,
                            f"replication slot {node.name} is {state}"
                            + ("" if slot is None else f", retaining {_mib(slot.retained_bytes)} of WAL")))
    standbys = {node.name for node in policy.topology.standbys}
    checks.extend(slot_retention(policy, primary.name, slot, of_a_standby=slot.slot_name in standbys)
                  for slot in slots.values())
    return checks


def _megabytes(setting: str | None) -> str:
    if setting is None:
        return "not set"
    return "-1 (unlimited)" if setting == "-1" else f"{setting}MB"


def slot_retention(policy: Policy, primary: str, slot: ReplicationSlot, *, of_a_standby: bool) -> Check:
    """The WAL a replication slot holds on the primary against the policy's bound: failing, with an alert, from
    `slot_wal_alert_ratio` of the bound on (time to act before PostgreSQL drops the standby's WAL at the bound)."""
    monitor = policy.health_monitor
    bound, ratio = monitor.max_slot_wal_keep, monitor.slot_wal_alert_ratio
    alert_at = int(bound * ratio)
    name = slot.slot_name
    whose = f"standby {name}" if of_a_standby else f"slot {name} (no standby of the policy: a leftover?)"
    subject = f"WAL retained on {primary} by slot {name}"
    details = {"slot": name, "retained_bytes": slot.retained_bytes, "wal_status": slot.wal_status,
               "alert_at_bytes": alert_at, "bound_bytes": bound, "active": slot.active}
    limits = f"{_mib(alert_at)} alert level ({ratio:.0%} of the {_mib(bound)} bound, max_slot_wal_keep_size)"
    if slot.wal_status == "lost":
        return Check("configuration", subject, False,
                     f"slot {name} lost its WAL past the {_mib(bound)} bound (max_slot_wal_keep_size): the primary's "
                     f"disk was kept, {whose} cannot stream again until it is cloned again. HINT: clone it again from the "
                     f"primary (docs/runbooks/failover.md, 'A slot that lost its WAL') or drop the slot", details, alert=monitor.slot_wal_alert_severity)
    if slot.wal_status == "unreserved":
        return Check("configuration", subject, False,
                     f"slot {name} retains {_mib(slot.retained_bytes)} of WAL, past the {_mib(bound)} bound "
                     f"(max_slot_wal_keep_size): the next checkpoint removes it and {whose} must then be cloned again",
                     details, alert=monitor.slot_wal_alert_severity)
    retained = slot.retained_bytes or 0
    if retained >= alert_at:
        return Check("configuration", subject, False,
                     f"slot {name} retains {_mib(retained)} of WAL, over the {limits}: {whose} is "
                     f"{'streaming' if slot.active else 'not connected'} that far behind; at the bound its WAL is "
                     f"removed and it must be cloned again. HINT: bring it back (or drop the slot if it is gone)",
                     details, alert=monitor.slot_wal_alert_severity)
    return Check("configuration", subject, True,
                 f"slot {name} retains {_mib(retained)} of WAL, under the {limits}", details)


def _standby_names(setting: str) -> set[str]:
    """Names in synchronous_standby_names, whatever its form: 'a,b', 'FIRST 1 (a, b)', 'ANY 2 (a,"b")'."""
    inner = setting[setting.find("(") + 1: setting.rfind(")")] if "(" in setting else setting
    return {part.strip().strip('"') for part in inner.split(",") if part.strip()}


# What a planned topology change (a switchover: the primary stopped, the entry point paused, the standbys
# reconnecting, the application moved) disturbs for its few seconds; storage it does not. Configuration it does: the
# node promoted for the while finds its replication slots inactive and no synchronous standby named until the
# others follow it (seen: a drill's switchover to dr read that way by a check run during it).
DISTURBED_BY_A_CHANGE: frozenset[str] = frozenset({"database", "application", "network", "archiving",
                                                   "configuration"})


@dataclass(frozen=True)
class ChangeSeen:
    """A planned topology change the checks of one run may have seen: what it was, since when it was active, and
    the moment to judge it at (now while it holds the lease; its end once it gave the lease back)."""

    change: str
    active_since: datetime
    judged_at: datetime


def change_seen_by_checks(*, held: tuple[str, datetime] | None, ended: tuple[str, datetime] | None,
                          checks_started: datetime, now: datetime) -> ChangeSeen | None:
    """The change a run's checks overlapped, from the cluster lease read after them. `held`: the holder's
    description and when it took or last renewed the lease; `ended`: the last lease given back, described, and
    when. A change that ended after the checks started may have disturbed them although no lease is held by the
    time they are weighed (a drill's switchover back in the seconds between the checks and the assessment)."""
    if held is not None:
        return ChangeSeen(held[0], held[1], now)
    if ended is not None and ended[1] >= checks_started:
        return ChangeSeen(f"{ended[0]} (ended after this run's checks began)", ended[1], ended[1])
    return None


def during_topology_change(checks: Sequence[Check], *, change: str, active_since: datetime, now: datetime,
                           grace: timedelta) -> list[Check]:
    """The checks with every failure a planned topology change in progress causes marked as expected (healthy,
    its finding kept in the reason): a switchover by a drill or dr_failover is not a disaster, must not page
    anyone nor trigger an automatic failover. Only while the change renewed its cluster lease within `grace`
    (the policy's failover.step_timeout): a run that died holding it stops covering failures after that."""
    if now - active_since > grace:
        return list(checks)
    return [Check(c.component, c.subject, True,
                  f"expected while {change} changes the cluster: {c.reason}", {**c.details, "expected_during": change})
            if not c.healthy and c.component in DISTURBED_BY_A_CHANGE else c for c in checks]


def assess(policy: Policy, checks: list[Check]) -> Assessment:
    """Sum each failing component's weight once: the requirements' should_trigger_disaster_recovery."""
    weights = policy.health_monitor.weights
    failing = [c for c in checks if not c.healthy]
    failing_components = {c.component for c in failing}
    score = sum(weights.get(component, 0) for component in failing_components)  # type: ignore[call-overload]
    return Assessment(score=score, threshold=policy.health_monitor.disaster_threshold, failing=failing, checks=checks)


# A standby whose WAL receiver heard from the primary this recently still has a working path to it
# (the walreceiver drops a silent connection after wal_receiver_timeout, 60 s by default).
PRIMARY_ALIVE_WITHIN_SECONDS = 60.0


def primary_failing(assessment: Mapping[str, Any]) -> bool:
    """Whether the primary itself failed its check: the only ground for an automatic promotion."""
    return any(c["component"] == "database" and str(c["subject"]).startswith("primary ")
               for c in assessment.get("failing", []))


def primary_seen_alive(standbys: Mapping[str, PostgresNode]) -> str | None:
    """A second opinion from paths the monitor does not share: the reason a standby still hears
    from the primary, or None when none does (the loss is confirmed)."""
    for name, node in standbys.items():
        try:
            receiver = node.wal_receiver()
        except NodeUnreachable:
            continue
        if receiver is None or receiver.status != "streaming":
            continue
        age = receiver.last_message_age_seconds
        if age is not None and age <= PRIMARY_ALIVE_WITHIN_SECONDS:
            return (f"standby {name} still streams from the primary (last message {age:.1f}s ago): the primary is "
                    f"alive from there, so the monitor's own path to it is failing, not the primary")
    return None
