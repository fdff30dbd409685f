"""Reports of restore tests, drills, failovers and region-loss exercises: what was measured (each data category's
RPO by what measures it, each function's RTO), the verdict against an objective, and where reports go. The one
place the exercises measure RTO and RPO, so a drill, a failover and a region loss say the same thing the same way."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

from continuity.failover.records import (AUDIT_PREFIX, FailoverAudit, FailoverRecords, audit_name, audit_run_prefix,
                                        database_loss)
from continuity.objects.audit import Consistency
from continuity.objects.store import ObjectStore, heartbeat_lag
from continuity.policy.model import Policy, format_duration
from continuity.storage.locations import StorageLocation

ResultT = TypeVar("ResultT", bound=BaseModel)


NOT_MEASURED = "not measured"


class Objective(BaseModel):
    """One line of a report: what was measured, from where, against which target; or `not measured`."""

    model_config = ConfigDict(extra="forbid")

    objective: str
    function: str | None = None
    measured_seconds: float | None
    target: str
    maximum: str
    within_target: bool | None
    within_maximum: bool | None
    source: str | None
    not_measured: list[str] = []
    verdict: str


def verdict(within_target: bool | None, within_maximum: bool | None) -> str:
    """'pass' within the target, 'within maximum' past it but inside the tolerated maximum, 'FAIL'
    past both; 'not measured' when nothing measured it (never a pass)."""
    if within_target is None:
        return NOT_MEASURED
    if within_target:
        return "pass"
    return "within maximum" if within_maximum else "FAIL"


def objective(name: str, *, measured_seconds: float | None, target: timedelta, maximum: timedelta,
              source: str | None, not_measured: list[str] | None = None, function: str | None = None,
              broken: str | None = None) -> Objective:
    """`broken`: a measurement that fails the objective whatever the time says (e.g. referenced objects
    missing from the replica); it is added to the source."""
    measured = measured_seconds is not None and source is not None
    within_target = measured_seconds <= target.total_seconds() if measured else None
    within_maximum = measured_seconds <= maximum.total_seconds() if measured else None
    if broken:
        within_target, within_maximum = False, False
        source = f"{source}; {broken}" if source else broken
    return Objective(objective=name, function=function,
                     measured_seconds=round(measured_seconds, 3) if measured else None,
                     target=format_duration(target), maximum=format_duration(maximum),
                     within_target=within_target, within_maximum=within_maximum,
                     source=source if measured or broken else None, not_measured=list(not_measured or []),
                     verdict=verdict(within_target, within_maximum))


def function_rto_objectives(policy: Policy, *, measured_seconds: float | None, source: str) -> list[Objective]:
    """Every business function of the policy: the database's measured recovery for those that depend on
    it (naming the dependencies it does not cover), `not measured` for the rest."""
    on_database = policy.functions_on_the_database()
    return [objective(f"RTO {name}", function=name, measured_seconds=measured_seconds if name in on_database else None,
                      target=function.rto.target, maximum=function.rto.maximum,
                      source=source if name in on_database else None,
                      not_measured=policy.unmeasured_dependencies(name))
            for name, function in sorted(policy.business_functions.items())]


def application_rto_objectives(policy: Policy, *, started_at: datetime, probe: Mapping[str, Any] | None,
                               fallback_seconds: float | None, fallback_source: str,
                               counted_from: str | None = None) -> list[Objective]:
    """Every business function's RTO from the start of the event until its synthetic transaction succeeded
    (`probe`: an ApplicationProbe as JSON). A failed transaction fails the objective, named; one the round
    could not run (read-only) falls back to the database's recovery, naming what that does not cover.
    `counted_from`: what `started_at` is, said in each measured line's source."""
    transactions = {t["function"]: t for t in (probe or {}).get("transactions", [])}
    fallback = {o.function: o for o in function_rto_objectives(policy, measured_seconds=fallback_seconds,
                                                               source=fallback_source)}
    where = f"{'read-only ' if (probe or {}).get('read_only') else ''}synthetic transaction in {(probe or {}).get('region')}"
    lines = []
    for name, function in sorted(policy.business_functions.items()):
        t = transactions.get(name)
        if t is None or t.get("ok") is None:
            line = fallback[name]
            if t is not None:  # the round ran but could not prove it: named beside what the fallback leaves out
                line = line.model_copy(update={"not_measured": [*line.not_measured,
                                                                f"its {t['transaction']} transaction (read-only round)"]})
            lines.append(line)
            continue
        finished = datetime.fromisoformat(t["finished_at"]) if isinstance(t["finished_at"], str) else t["finished_at"]
        seconds = (finished - started_at).total_seconds()
        source = f"{name}'s {where} ({t['transaction']}) at {finished.isoformat(timespec='seconds')}: {t['reason']}"
        if counted_from:
            source += f"; counted from {counted_from}"
        lines.append(objective(f"RTO {name}", function=name, measured_seconds=seconds, target=function.rto.target,
                               maximum=function.rto.maximum, source=source,
                               broken=None if t["ok"] else f"the transaction FAILED: {t['reason']}"))
    return lines


class Measurement(BaseModel):
    """A data category's measured RPO: seconds and where they come from; `broken` fails it whatever the
    time says (e.g. referenced objects missing from the replica). No seconds: not measured."""

    model_config = ConfigDict(extra="forbid")

    seconds: float | None = None
    source: str | None = None
    broken: str | None = None


def rpo_objectives(policy: Policy, measurements: Mapping[str, Measurement]) -> list[Objective]:
    """Each data category's RPO against its target and maximum, then each business function's: the worst
    of its categories' (a category nothing measured is named `not measured`, never passed)."""
    lines = []
    for name, category in sorted(policy.data_categories.items()):
        m = measurements.get(name) or Measurement()
        lines.append(objective(f"RPO {name}", measured_seconds=m.seconds, target=category.rpo.target,
                               maximum=category.rpo.maximum, source=m.source, broken=m.broken))
    for name, function in sorted(policy.business_functions.items()):
        measured = [(c, measurements[c]) for c in function.data_categories
                    if c in measurements and measurements[c].seconds is not None and measurements[c].source]
        unmeasured = [c for c in function.data_categories if c not in dict(measured)]
        worst = max((m.seconds for _, m in measured), default=None)
        source = "; ".join(m.source for _, m in measured) if measured else None
        broken = "; ".join(m.broken for _, m in measured if m.broken) or None
        lines.append(objective(f"RPO {name}", function=name, measured_seconds=worst if not unmeasured else None,
                               target=function.rpo.target, maximum=function.rpo.maximum,
                               source=source if not unmeasured else None,
                               broken=broken if not unmeasured else None,
                               not_measured=[f"data category {c}" for c in unmeasured]))
    return lines


def rpo_measurements(policy: Policy, *, database: Measurement | None, config: Measurement | None = None,
                     objects: Mapping[str, Measurement] | None = None) -> dict[str, Measurement]:
    """Each data category's measurement by what its policy says measures it (`measured_by`): the database's,
    the newest config backup's age, or its object replica's. A category with none is left out, and
    rpo_objectives says `not measured` for it."""
    measurements: dict[str, Measurement] = {}
    for name, category in sorted(policy.data_categories.items()):
        if category.measured_by == "database" and database is not None:
            measurements[name] = database
        elif category.measured_by == "config_backup" and config is not None:
            measurements[name] = config
        elif category.measured_by == "object_replication" and name in (objects or {}):
            measurements[name] = (objects or {})[name]
    return measurements


def object_rpo(replica: tuple[ObjectStore, str], check: Consistency | None) -> Measurement:
    """An object category's RPO: the DR replica's heartbeat lag, broken when objects the recovered
    database references are missing there."""
    store, source_prefix = replica
    lag, lag_source = heartbeat_lag(source_prefix, store)
    source = f"replication lag: {lag_source} ({store.describe(store.prefix)})" if lag is not None else None
    broken = None
    if check is not None:
        source = (source + "; " if source else "") + \
            f"{check.present} of {check.referenced} objects the recovered database references are in the replica"
        if not check.consistent:
            broken = (f"{len(check.missing)} referenced objects missing from the replica"
                      + (f" (first: {', '.join(check.missing[:3])})" if check.missing else "")
                      + (f", {len(check.mismatched)} different" if check.mismatched else ""))
    return Measurement(seconds=lag, source=source, broken=broken)


def config_backup_age(newest: Any, *, location: str, at: datetime) -> Measurement:
    """The configuration's RPO: how old the newest config backup in `location` was at `at`."""
    return Measurement(seconds=max(0.0, (at - newest.finished_at).total_seconds()),
                       source=f"age of the newest config backup {newest.backup_id} in location {location}")


class FailoverObjectives(BaseModel):
    """A failover's or switchover's measured objectives, for its audit."""

    rto: list[Objective]
    rpo: list[Objective]
    downtime_cost: str


def failover_objectives(policy: Policy, records: FailoverRecords,
                        replicas: Mapping[str, tuple[ObjectStore, str]]) -> FailoverObjectives:
    """Each function's RTO from preflight (from a person's approval, when one was asked: the wait is reported
    apart) until its synthetic transaction in the new primary's region succeeded (`not measured` without a probe
    round), and every RPO: the database's from the catch-up, the objects' from the
    replica the application now serves from (`replicas`, its heartbeat lag) when it moved region, 0 when it did
    not move (no object was left behind)."""
    if records.preflight is None:
        raise ValueError("failover objectives need the preflight plan: this run made none")
    probe = records.validation.application if records.validation else None
    approval = records.approve
    if approval is not None and approval.required and approval.answered is not None:
        # A person's decision time is not the recovery's: the wait is the audit's approval_wait_seconds.
        started_at = approval.answered
        counted_from = (f"the approval by {approval.approved_by} at {approval.answered_at} (the run waited "
                        f"{approval.waited_seconds} s for it, reported apart)")
    else:
        started_at = datetime.fromisoformat(records.preflight.checked_at)
        counted_from = f"preflight at {records.preflight.checked_at}"
    rto = application_rto_objectives(policy, started_at=started_at, probe=probe, fallback_seconds=None,
                                     fallback_source="", counted_from=counted_from)
    seconds, cost = price_downtime(policy, rto)
    loss_seconds, loss_source = database_loss(records)
    moved = records.start_application
    objects: dict[str, Measurement] = {}
    if moved is not None and moved.moved:
        objects = {name: object_rpo(replica, None) for name, replica in replicas.items()}
    elif moved is not None:
        objects = {name: Measurement(seconds=0.0, source=f"the application still serves from {moved.to_region}'s "
                                                         f"bucket: no object left behind")
                   for name in policy.data_categories}
    measurements = rpo_measurements(policy, database=Measurement(seconds=loss_seconds, source=loss_source),
                                    objects=objects)
    return FailoverObjectives(rto=rto, rpo=rpo_objectives(policy, measurements),
                              downtime_cost=f"{seconds} s: {cost}" if seconds is not None else cost)


def price_downtime(policy: Policy, objectives: list[Objective]) -> tuple[float | None, str]:
    """Until every function was back (the slowest RTO measured), priced with the policy's downtime table
    (section 1.2); not measured while any function's RTO is."""
    from continuity.incidents.communication import downtime_cost

    rto = [o for o in objectives if o.objective.startswith("RTO ") and o.function]
    if not rto or any(o.measured_seconds is None for o in rto):
        return None, "not measured (a function's RTO was not measured)"
    worst = max(o.measured_seconds for o in rto)
    return worst, downtime_cost(policy, timedelta(seconds=worst))


def application_line(probe: Mapping[str, Any] | None) -> str:
    """One Markdown line for a probe round (an ApplicationProbe as JSON)."""
    if not probe:
        return "- application: not measured"
    done = ", ".join(f"{t['function']} {'ok' if t['ok'] else 'not measured' if t['ok'] is None else 'FAILED'}"
                     for t in probe.get("transactions", []))
    return f"- application ({'read-only, ' if probe.get('read_only') else ''}{probe.get('region')}): {done}"


def objectives_table(objectives: list[Objective]) -> list[str]:
    """A report's objectives as Markdown table lines: what was measured, from where, the verdict."""
    lines = ["| objective | measured | target | maximum | verdict | measured from |", "|---|---|---|---|---|---|"]
    for o in objectives:
        measured = "—" if o.measured_seconds is None else f"{o.measured_seconds} s"
        source = o.source or "nothing measures it yet"
        if o.not_measured:
            source += f" (not measured: {', '.join(o.not_measured)})"
        lines.append(f"| {o.objective} | {measured} | {o.target} | {o.maximum} | {o.verdict} | {source} |")
    return lines


def failing_objectives(objectives: list[Objective]) -> list[str]:
    """Measured objectives past their maximum (a `not measured` line never fails and never passes)."""
    return [o.objective for o in objectives if o.within_maximum is False]


def store_report(result: ResultT, locations: Sequence[StorageLocation], *, name: str, prefix: str,
                 render: Callable[[ResultT], str] | None = None,
                 warn: Callable[[str], None] | None = None) -> list[str]:
    """Write the JSON report (and, with `render`, its Markdown beside it) to every location; returns where the
    JSON went. Without `warn` the first location that fails raises; with it, each failure is said through `warn`
    and the others are still written: a report that must reach every location that answers (an audit or an
    alert during an outage) takes `warn`."""
    keys = []
    for location in locations:
        try:
            location.put_bytes(f"{prefix}{name}.json", result.model_dump_json(indent=2).encode())
            if render is not None:
                location.put_bytes(f"{prefix}{name}.md", render(result).encode())
        except Exception as exc:
            if warn is None:
                raise
            warn(f"could not write {prefix}{name}.json to location {location.name}: {exc}")
            continue
        keys.append(location.describe(f"{prefix}{name}.json"))
    return keys


class AuditNotStored(RuntimeError):
    """No storage location took a failover's audit (its text is in the task's log)."""


def store_failover_audit(audit: FailoverAudit, locations: Sequence[StorageLocation], *, attempt: int,
                         warn: Callable[[str], None]) -> list[str]:
    """Write a dr_failover run's audit to every location that answers, under a name unique to the run and the
    attempt (`audit_name`); returns where it went. AuditNotStored when no location took it: the cluster is
    safe by then (the record step runs last), but a failover nobody can audit must not end green."""
    name = audit_name(audit.run_id, attempt=attempt, at=datetime.now(timezone.utc))
    failed: list[str] = []

    def note(message: str) -> None:
        failed.append(message)
        warn(message)

    written = store_report(audit, locations, name=name, prefix=AUDIT_PREFIX, warn=note)
    if not written:
        raise AuditNotStored(f"the failover audit of run {audit.run_id} could not be stored in any location "
                             f"({'; '.join(failed)}); its full text is in this task's log. HINT: copy it to "
                             f"{AUDIT_PREFIX}{name}.json once storage answers")
    return written


def run_audits(location: StorageLocation, run_id: str) -> list[dict[str, Any]]:
    """Every audit of one dr_failover run kept in `location`, first attempt first."""
    import json

    keys = sorted(k for k in location.list(audit_run_prefix(run_id)) if k.endswith(".json"))
    return [json.loads(location.get_bytes(key)) for key in keys]
