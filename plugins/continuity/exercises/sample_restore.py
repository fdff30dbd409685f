"""The weekly sample restore test: prove the DR region can restore, measure it, compare with RTO.

A logical backup from the DR region (never the primary region), chosen at random among the last
week's but stable for a run id, is restored as a sample of tables into a scratch cluster and
validated; the restore time is extrapolated to the full database and compared with the RTO of
every business function that depends on the database. The report is JSON plus Markdown.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from continuity.storage.archive import IntegrityError
from continuity.storage.catalog import Catalog
from continuity.restore.expectations import load_suite, validate_restored
from continuity.storage.manifest import Manifest
from continuity.objects.audit import Consistency
from continuity.objects.store import ObjectStore
from continuity.policy.model import Policy, format_duration
from continuity.reports import Objective, application_line, failing_objectives, function_rto_objectives
from continuity.restore.engine import (RESTORE_ROLE, RestoreError, amcheck, check_object_references, replicated_through,
                                restore_logical, sample_tables, scratch_cluster)
from continuity.storage.locations import StorageLocation, key_safe, stored_documents

REPORT_PREFIX = "reports/restore-test/"


class CheckRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    table: str
    expectation: str
    success: bool
    observed: Any = None
    description: str = ""


class RestoreTestResult(BaseModel):
    """A restore test's report (JSON in storage; XCom carries a summary). A test that could not restore
    at all has `error` and no measurements."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["restore-test"] = "restore-test"
    tested_at: str
    success: bool
    failed_checks: list[str]
    error: str | None = None
    run: str | None = None
    backup_id: str | None = None
    backup_finished_at: str | None = None
    chosen_location: str | None = None
    restored_from: str | None = None
    corrupt_copies: list[str] = []
    tables: list[str] = []
    sample_rows: int = 0
    total_rows: int = 0
    restore_seconds: float | None = None
    rows_per_second: int | None = None
    extrapolated_full_restore_seconds: float | None = None
    objectives: list[Objective] = []
    checks: list[CheckRecord] = []
    amcheck: str | None = None
    objects: list[Consistency] = []
    alone: bool = False  # restored from `chosen_location`'s copy only (a rotation test), no fallback
    last_proven: dict[str, str | None] = {}  # every location: when a restore test last restored from it alone
    full_restore: bool = False  # every table restored: restore_seconds is a measurement, not a sample
    sample_estimate_seconds: float | None = None  # the sample's rate times all rows, before calibration
    calibrated_by: str | None = None  # the last measured full restore the estimate was held against
    estimate_to_measured_ratio: float | None = None  # the estimate / the last full restore scaled to this size
    application: dict[str, Any] | None = None  # the read-only synthetic transactions on the restored database


def stored_results(locations: Sequence[StorageLocation]) -> list[RestoreTestResult]:
    """Every restore test report kept, oldest first (a report of another version is not evidence)."""
    results = []
    for document in stored_documents(locations, REPORT_PREFIX):
        try:
            results.append(RestoreTestResult.model_validate(document))
        except ValueError:
            continue
    return sorted(results, key=lambda r: r.tested_at)


def last_full_restore(results: Sequence[RestoreTestResult]) -> RestoreTestResult | None:
    """The newest successful restore of a whole backup: what sample estimates are held against."""
    full = [r for r in results if r.full_restore and r.success and r.restore_seconds and r.total_rows]
    return full[-1] if full else None


def calibrated_estimate(sample_estimate: float, total_rows: int, last_full: RestoreTestResult | None
                        ) -> tuple[float, str | None, float | None]:
    """The estimate never below what was measured: the last full restore's seconds scaled to this backup's
    rows (restore time grows at least linearly with rows), if higher than the sample's extrapolation.
    Returns (estimate, source of the calibration, sample estimate / scaled measurement)."""
    if last_full is None or not last_full.restore_seconds or not last_full.total_rows:
        return sample_estimate, None, None
    scaled = last_full.restore_seconds * total_rows / last_full.total_rows
    source = (f"full restore of {last_full.backup_id} ({last_full.total_rows:,} rows) measured "
              f"{last_full.restore_seconds} s on {last_full.tested_at[:10]}")
    return max(sample_estimate, scaled), source, round(sample_estimate / scaled, 3) if scaled else None


def last_proven(results: Sequence[RestoreTestResult]) -> dict[str, datetime]:
    """When each location was last proven restorable: the newest successful restore test that restored
    from it without a corrupt copy on the way."""
    proven: dict[str, datetime] = {}
    for result in results:
        if result.success and result.restored_from and not result.corrupt_copies:
            when = datetime.fromisoformat(result.tested_at)
            if result.restored_from not in proven or when > proven[result.restored_from]:
                proven[result.restored_from] = when
    return proven


def locations_due(policy: Policy, proven: Mapping[str, datetime], *, now: datetime,
                  run_interval: timedelta) -> list[str]:
    """The locations this run must prove: every one that would pass its period before the next run
    (never proven: at once). The DR region's first, then the most overdue."""
    periods = policy.restore_test_periods()
    due = [name for name, period in periods.items()
           if name not in proven or now - proven[name] + run_interval > period]
    dr = {loc.name for loc in policy.storage.locations if loc.region == policy.topology.dr_region}
    return sorted(due, key=lambda n: (n not in dr, proven.get(n, datetime.min.replace(tzinfo=timezone.utc))))


def unproven_alarms(policy: Policy, proven: Mapping[str, datetime], *, now: datetime) -> list[str]:
    """A location not proven restorable within its period: an alarm naming it and when it last was."""
    alarms = []
    for name, period in policy.restore_test_periods().items():
        when = proven.get(name)
        if when is None or now - when > period:
            alarms.append(f"location {name} has not been proven restorable within {format_duration(period)} "
                          f"(last: {when.isoformat(timespec='seconds') if when else 'never'})")
    return alarms


class RestoreTestStep(BaseModel):
    """One restore of the run: from `location` (alone: no fallback to another copy), a sample or every table."""

    model_config = ConfigDict(extra="forbid")

    location: str
    full: bool = False
    alone: bool = False
    check_application: bool = False  # the DR region's application on the restored database
    seed: str
    report_name: str


class RestoreTestPlan(BaseModel):
    """What a restore-test run does, decided from the policy and the reports kept: the steps in order and the
    sentences that say why."""

    model_config = ConfigDict(extra="forbid")

    steps: list[RestoreTestStep]
    proven: dict[str, datetime]
    last_full: RestoreTestResult | None = None
    reasons: list[str] = []


def plan_restore_test(policy: Policy, history: Sequence[RestoreTestResult], *, now: datetime, run_interval: timedelta,
                      run_id: str) -> RestoreTestPlan:
    """The run's steps: a full restore from the DR region when `full_restore_every` has passed since the last
    one (its measurement calibrates the samples after it), then a sample from each location whose turn has come
    (`locations_due`): the DR region's with its application checked, each other location from its own copy
    alone. Every report's name is the run's, with the location unless it is the DR region's sample."""
    proven = last_proven(history)
    last_full = last_full_restore(history)
    due = locations_due(policy, proven, now=now, run_interval=run_interval)
    dr = sorted(loc.name for loc in policy.storage.locations if loc.region == policy.topology.dr_region)
    reasons = [f"locations to prove restorable this run: {', '.join(due) or 'none'} (last proven: "
               + (", ".join(f"{n} {w.isoformat(timespec='seconds')}" for n, w in sorted(proven.items())) or "none")
               + ")"]
    steps = []
    every = policy.validation.restore_test.full_restore_every
    if dr and (last_full is None or now - datetime.fromisoformat(last_full.tested_at) > every):
        reasons.append(f"a full restore is due (last: {last_full.tested_at if last_full else 'never'}; every "
                       f"{format_duration(every)}): restoring every table of a DR backup and timing it")
        steps.append(RestoreTestStep(location=dr[0], full=True, seed=f"{run_id}-full",
                                     report_name=key_safe(f"{run_id}-full")))
    application = policy.application is not None and policy.application.service_control is not None
    for location in due:
        in_dr = location in dr
        steps.append(RestoreTestStep(location=location, alone=not in_dr, check_application=in_dr and application,
                                     seed=f"{run_id}-{location}",
                                     report_name=key_safe(run_id if in_dr else f"{run_id}-{location}")))
    return RestoreTestPlan(steps=steps, proven=proven, last_full=last_full, reasons=reasons)


def proves(result: RestoreTestResult, location: str) -> bool:
    """Whether `result` proves `location` restorable: it succeeded, from that location, with no corrupt copy."""
    return result.success and result.restored_from == location and not result.corrupt_copies


def restore_test_problems(results: Sequence[RestoreTestResult]) -> list[str]:
    """Each failed restore of the run, named by its location, with the checks that broke."""
    return [f"{r.chosen_location or 'restore'}: " + "; ".join(r.failed_checks or ["RTO maximum exceeded"])
            for r in results if not r.success]


def pick_backup(catalog: Catalog, location: str, *, seed: str, now: datetime, days: int = 7) -> Manifest:
    recent = [m for m in catalog.list(kind="logical", location=location) if m.finished_at >= now - timedelta(days=days)]
    if not recent:
        raise RestoreError(f"location {location} holds no logical backup from the last {days} days to test")
    return random.Random(seed).choice(sorted(recent, key=lambda m: m.backup_id))


def run_sample_restore_test(*, catalog: Catalog, policy: Policy, seed: str, report: Callable[[str], None],
                            now: datetime | None = None, scratch_prefix: str = "continuity-scratch-",
                            object_replicas: Mapping[str, tuple[ObjectStore, str]] | None = None,
                            location: str | None = None, alone: bool = False, full: bool = False,
                            last_full: RestoreTestResult | None = None,
                            application_check: Callable[[str], Any] | None = None) -> RestoreTestResult:
    """Restore a sample of a recent logical backup from `location` (default: the DR region's) and check it.
    `alone`: from that location's copy only (a corrupt copy fails the test instead of falling back to
    another location's). `object_replicas`: each object category's DR replica; the tables referencing
    objects are always in the sample and every reference is checked against the replica.
    `application_check(dsn, uploaded_before=...)`: run the read-only synthetic transactions on an application
    instance using the restored database (its tables, `application.read_only_tables`, are always in the
    sample), reading objects the replicas hold copies of."""
    now = now or datetime.now(timezone.utc)
    dr_locations = [loc.name for loc in policy.storage.locations if loc.region == policy.topology.dr_region]
    if location is None and not dr_locations:
        raise RestoreError(f"the policy has no storage location in the DR region {policy.topology.dr_region}")
    chosen_location = location or dr_locations[0]
    manifest = pick_backup(catalog, chosen_location, seed=seed, now=now)
    source_database = manifest.source.get("database", "app")
    suite = load_suite(source_database)
    referencing = {policy.objects.categories[name].database_reference.table for name in (object_replicas or {})
                   if policy.objects and (ref := policy.objects.categories[name].database_reference) is not None
                   and ref.database == source_database}
    critical = sorted(set(policy.validation.restore_test.critical_tables) | set(suite.get("critical_tables", []))
                      | referencing
                      | (set(policy.application.read_only_tables) & set(counts_of(manifest))
                         if application_check and policy.application else set()))
    counts = {k.split(".", 1)[-1]: v for k, v in manifest.details["row_counts"].items()}
    tables = sorted(counts) if full else sample_tables(manifest, size=policy.validation.restore_test.sample_tables,
                                                       critical=critical, seed=seed)
    report(f"testing backup {manifest.backup_id} from location {chosen_location}: sample {', '.join(tables)}")
    fallbacks = [chosen_location] + ([] if alone else [loc.name for loc in policy.storage.locations
                                                       if loc.name != chosen_location and loc.name in catalog.locations])
    corrupt: list[str] = []
    with scratch_cluster(prefix=scratch_prefix) as scratch:
        used = None
        for location in fallbacks:
            database = f"restored_{len(corrupt)}"
            try:
                restore_logical(manifest, catalog=catalog, location=location, scratch=scratch, database=database,
                                tables=tables)
            except IntegrityError as exc:
                corrupt.append(f"{location}: {exc}")
                report(f"CORRUPT copy of {manifest.backup_id} in location {location}: {exc}; trying the next location")
                continue
            used = location
            break
        if used is None:
            raise RestoreError(f"no location holds a good copy of {manifest.backup_id}: " + "; ".join(corrupt))
        restore_seconds = scratch.timings["restore"]
        checks = validate_restored(manifest=manifest, socket_dir=scratch.cluster.socket_dir, port=scratch.port,
                                   database=database, tables=tables, suite=suite, user=RESTORE_ROLE)
        # Restored indexes are rebuilt from the dumped rows: B-tree checks catch a copy whose
        # rows violate the order or uniqueness the indexes promise.
        amcheck_ok, amcheck_detail = amcheck(scratch)
        report(amcheck_detail)
        consistency = [check for name, (replica, _) in (object_replicas or {}).items()
                       if (check := check_object_references(policy, name, replica, scratch, database,
                                                            source_database=source_database, report=report,
                                                            user=RESTORE_ROLE))]
        application = None
        if application_check is not None:
            probe = application_check(scratch.conninfo(database, user=RESTORE_ROLE),
                                      uploaded_before=replicated_through(consistency))
            application = probe.model_dump(mode="json")
            report(probe.summary())
    sample_rows = sum(counts[t] for t in tables)
    total_rows = sum(counts.values()) or 1
    sample_estimate = restore_seconds * total_rows / max(sample_rows, 1)
    if full:
        extrapolated, calibration, ratio = restore_seconds, None, None
        source = f"full restore of all {total_rows:,} rows of backup {manifest.backup_id} in {restore_seconds:.3f} s"
    else:
        extrapolated, calibration, ratio = calibrated_estimate(sample_estimate, total_rows, last_full)
        source = (f"restore of {sample_rows:,} sampled rows in {restore_seconds:.3f} s, extrapolated to all "
                  f"{total_rows:,} rows of backup {manifest.backup_id} ({sample_estimate:.3f} s)"
                  + (f", held to at least the {calibration}" if calibration else ", no full restore measured yet"))
    objectives = function_rto_objectives(policy, measured_seconds=extrapolated, source=source)
    failed = [c for c in checks if not c.success]
    return RestoreTestResult(
        tested_at=now.isoformat(), backup_id=manifest.backup_id, backup_finished_at=manifest.finished_at.isoformat(),
        chosen_location=chosen_location, restored_from=used, corrupt_copies=corrupt, tables=tables,
        sample_rows=sample_rows, total_rows=total_rows, restore_seconds=round(restore_seconds, 3),
        rows_per_second=round(sample_rows / max(restore_seconds, 1e-9)),
        extrapolated_full_restore_seconds=round(extrapolated, 3), objectives=objectives,
        checks=[CheckRecord(table=c.table, expectation=c.expectation, success=c.success, observed=c.observed,
                            description=c.description) for c in checks],
        amcheck=amcheck_detail, objects=consistency, alone=alone, full_restore=full,
        sample_estimate_seconds=round(sample_estimate, 3), calibrated_by=calibration, estimate_to_measured_ratio=ratio,
        application=application,
        success=not failed and amcheck_ok and not failing_objectives(objectives) and all(c.consistent for c in consistency)
        and not (application and application_failure(application)),
        failed_checks=[f"{c.table}: {c.description} (observed {c.observed})" for c in failed]
        + ([] if amcheck_ok else [amcheck_detail])
        + [f"{c.category}: {len(c.missing)} objects referenced by the restored database are missing from {c.replica}"
           f"{' (first: ' + ', '.join(c.missing[:3]) + ')' if c.missing else ''}, {len(c.mismatched)} differ"
           for c in consistency if not c.consistent]
        + ([f"application on the restored database: {application_failure(application)}"]
           if application and application_failure(application) else []),
    )


def counts_of(manifest: Manifest) -> set[str]:
    return {k.split(".", 1)[-1] for k in manifest.details.get("row_counts", {})}


def application_failure(application: Mapping[str, Any]) -> str | None:
    """The first failed transaction of a probe round's JSON (None: every transaction passed or not measured)."""
    for t in application.get("transactions", []):
        if t.get("ok") is False:
            return f"{t['function']} ({t['transaction']}): {t['reason']}"
    return None if application.get("transactions") else "no transaction ran"


def failure_result(*, error: str, seed: str, now: datetime | None = None) -> RestoreTestResult:
    """The report of a restore test that could not restore at all (no backup, no good copy, a tool failed)."""
    return RestoreTestResult(tested_at=(now or datetime.now(timezone.utc)).isoformat(), run=seed, success=False,
                             error=error, failed_checks=[error])


def render_markdown(result: RestoreTestResult) -> str:
    if result.error is not None:
        return (f"# Restore test {result.tested_at}: FAIL\n\nThe restore itself failed, nothing was validated:\n\n"
                f"> {result.error}\n")
    lines = [
        f"# Restore test {result.tested_at}: {'PASS' if result.success else 'FAIL'}",
        "",
        f"- backup: `{result.backup_id}` (finished {result.backup_finished_at})",
        f"- chosen location: {result.chosen_location}; restored from: {result.restored_from}"
        f"{' (its own copy alone)' if result.alone else ''}",
        *[f"- location {name} last proven restorable: {when or 'never'}" for name, when in sorted(result.last_proven.items())],
        f"- sample: {', '.join(result.tables)} ({result.sample_rows:,} of {result.total_rows:,} rows)",
        (f"- full restore measured: {result.restore_seconds} s ({result.rows_per_second:,} rows/s), every table"
         if result.full_restore else
         f"- restore time: {result.restore_seconds} s ({result.rows_per_second:,} rows/s); "
         f"full restore estimated: {result.extrapolated_full_restore_seconds} s (the sample alone: "
         f"{result.sample_estimate_seconds} s" + (f"; last measured: {result.calibrated_by}, ratio "
                                                 f"{result.estimate_to_measured_ratio}" if result.calibrated_by else
                                                 "; no full restore measured yet") + ")"),
        f"- {result.amcheck}",
        application_line(result.application),
    ]
    for corrupt in result.corrupt_copies:
        lines.append(f"- **corrupt copy**: {corrupt}")
    lines += ["", "| business function | RTO target | RTO maximum | verdict | not measured |", "|---|---|---|---|---|"]
    for o in result.objectives:
        lines.append(f"| {o.function} | {o.target} | {o.maximum} | {o.verdict} | {', '.join(o.not_measured) or '—'} |")
    lines += ["", "| table | check | result | observed |", "|---|---|---|---|"]
    for c in result.checks:
        lines.append(f"| {c.table} | {c.description or c.expectation} | {'pass' if c.success else 'FAIL'} | {c.observed} |")
    return "\n".join(lines) + "\n"
