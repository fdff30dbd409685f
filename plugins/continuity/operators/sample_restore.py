"""SampleRestoreTestOperator: the weekly cross-region sample restore with its report."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.operators.base import ContinuityBackupOperator
from continuity.reports import store_report
from continuity.restore.engine import RestoreError, scratch_prefix
from continuity.policy.loading import cron_period
from continuity.exercises.sample_restore import (REPORT_PREFIX, RestoreTestResult, failure_result, last_full_restore,
                                     last_proven, locations_due, render_markdown, run_sample_restore_test,
                                     stored_results, unproven_alarms)
from continuity.storage.locations import key_safe


class SampleRestoreTestOperator(ContinuityBackupOperator):
    """Restore a sample of a recent logical backup into a scratch cluster from every storage location whose
    turn has come (the DR region's every run; each other location within its period of the policy's
    `validation.restore_test.locations`, from its own copy alone), validate it with Great Expectations,
    measure and extrapolate the restore time against the RTO targets, and write one report (JSON +
    Markdown) per location to every required location. The scratch cluster is always removed.
    Fails, after writing the reports, naming each expectation that broke and each location that has not
    been proven restorable within its period."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        policy = hook.policy
        catalog = hook.get_catalog()
        required = [catalog.locations[n] for n in sorted(hook.required_locations())]
        now = datetime.now(timezone.utc)
        history = stored_results(required)
        proven = last_proven(history)
        last_full = last_full_restore(history)
        dag = context["dag"]
        interval = cron_period(policy.schedule_for(dag.dag_id)) if dag.dag_id in policy.schedules else timedelta(days=7)
        due = locations_due(policy, proven, now=now, run_interval=interval)
        dr = {loc.name for loc in policy.storage.locations if loc.region == policy.topology.dr_region}
        self.log.info("locations to prove restorable this run: %s (last proven: %s)", ", ".join(due) or "none",
                      ", ".join(f"{n} {w.isoformat(timespec='seconds')}" for n, w in sorted(proven.items())) or "none")
        results: list[RestoreTestResult] = []
        dr_name = next(iter(sorted(dr)), None)
        application_check = None
        if policy.application is not None and policy.application.service_control is not None:
            from continuity.hooks.application import ApplicationProbeHook

            # The DR region's application, on the restored database and the DR object replica.
            application_check = ApplicationProbeHook(policy=policy, region=policy.topology.dr_region).verify_database
        full_due = dr_name is not None and (last_full is None or now - datetime.fromisoformat(last_full.tested_at)
                                            > policy.validation.restore_test.full_restore_every)
        if full_due:
            self.log.info("a full restore is due (last: %s): restoring every table of a DR backup and timing it",
                          last_full.tested_at if last_full else "never")
            try:
                full = run_sample_restore_test(catalog=catalog, policy=policy, seed=f"{context['run_id']}-full",
                                               report=self.log.info, location=dr_name, full=True,
                                               scratch_prefix=scratch_prefix(context["run_id"]),
                                               object_replicas=hook.get_object_replicas(policy.topology.dr_region))
            except RestoreError as exc:
                full = failure_result(error=f"full restore from {dr_name}: {exc}", seed=context["run_id"])
            for key in store_report(full, required, name=key_safe(f"{context['run_id']}-full"), prefix=REPORT_PREFIX,
                                    render=render_markdown):
                self.log.info("full restore report written to %s", key)
            if full.success:
                last_full = full
                self.log.info("full restore of %s: %s s for %d rows", full.backup_id, full.restore_seconds,
                              full.total_rows)
            results.append(full)
        for location in due:
            name = key_safe(f"{context['run_id']}-{location}") if location not in dr else key_safe(context["run_id"])
            try:
                result = run_sample_restore_test(catalog=catalog, policy=policy, seed=f"{context['run_id']}-{location}",
                                                 report=self.log.info, location=location, alone=location not in dr,
                                                 scratch_prefix=scratch_prefix(context["run_id"]), last_full=last_full,
                                                 object_replicas=hook.get_object_replicas(policy.topology.dr_region),
                                                 application_check=application_check if location in dr else None)
            except RestoreError as exc:
                result = failure_result(error=f"location {location}: {exc}", seed=context["run_id"])
            if result.success and result.restored_from == location and not result.corrupt_copies:
                proven[location] = datetime.fromisoformat(result.tested_at)
            result.last_proven = {n: (proven[n].isoformat(timespec="seconds") if n in proven else None)
                                  for n in policy.restore_test_periods()}
            for key in store_report(result, required, name=name, prefix=REPORT_PREFIX, render=render_markdown):
                self.log.info("report for location %s written to %s", location, key)
            if result.error is None:
                self.log.info("backup %s restored from %s%s: %d tables, %s s, full restore extrapolated to %s s",
                              result.backup_id, result.restored_from, " alone" if result.alone else "",
                              len(result.tables), result.restore_seconds, result.extrapolated_full_restore_seconds)
                for objective in result.objectives:
                    self.log.info("%s: RTO target %s: %s%s", objective.function, objective.target, objective.verdict,
                                  f" (not measured: {', '.join(objective.not_measured)})" if objective.not_measured else "")
            results.append(result)
        problems = [f"{r.chosen_location or 'restore'}: " + "; ".join(r.failed_checks or ["RTO maximum exceeded"])
                    for r in results if not r.success]
        alarms = unproven_alarms(policy, proven, now=now)
        for alarm in alarms:
            self.log.error("ALARM: %s", alarm)
        if problems or alarms:
            raise AirflowFailException("restore test failed: " + "; ".join(problems + alarms))
        main = next((r for r in results if not r.full_restore), None)
        full_seconds = next((r.restore_seconds for r in results if r.full_restore), None)
        return {"locations": [r.restored_from for r in results if not r.full_restore], "full_restore_seconds": full_seconds,
                # after this run (each report says how things stood when it was written)
                "last_proven": {n: (proven[n].isoformat(timespec="seconds") if n in proven else None)
                                for n in policy.restore_test_periods()},
                **(main.model_dump(mode="json", include={"backup_id", "restored_from", "corrupt_copies", "tables",
                                                         "restore_seconds", "extrapolated_full_restore_seconds",
                                                         "success"}) if main else {})}
