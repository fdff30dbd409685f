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
from continuity.exercises.sample_restore import (REPORT_PREFIX, RestoreTestResult, failure_result, plan_restore_test,
                                                 proves, render_markdown, restore_test_problems,
                                                 run_sample_restore_test, stored_results, unproven_alarms)


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
        dag = context["dag"]
        interval = cron_period(policy.schedule_for(dag.dag_id)) if dag.dag_id in policy.schedules else timedelta(days=7)
        plan = plan_restore_test(policy, stored_results(required), now=now, run_interval=interval,
                                 run_id=context["run_id"])
        for reason in plan.reasons:
            self.log.info("%s", reason)
        proven, last_full = dict(plan.proven), plan.last_full
        application_check = None
        if any(step.check_application for step in plan.steps):
            from continuity.hooks.application import ApplicationProbeHook

            # The DR region's application, on the restored database and the DR object replica.
            application_check = ApplicationProbeHook(policy=policy, region=policy.topology.dr_region).verify_database
        results: list[RestoreTestResult] = []
        for step in plan.steps:
            try:
                result = run_sample_restore_test(
                    catalog=catalog, policy=policy, seed=step.seed, report=self.log.info, location=step.location,
                    full=step.full, alone=step.alone, scratch_prefix=scratch_prefix(context["run_id"]),
                    last_full=None if step.full else last_full,
                    object_replicas=hook.get_object_replicas(policy.topology.dr_region),
                    application_check=application_check if step.check_application else None)
            except RestoreError as exc:
                what = f"full restore from {step.location}" if step.full else f"location {step.location}"
                result = failure_result(error=f"{what}: {exc}", seed=context["run_id"])
            if step.full:
                if result.success:
                    last_full = result
                    self.log.info("full restore of %s: %s s for %d rows", result.backup_id, result.restore_seconds,
                                  result.total_rows)
            else:
                if proves(result, step.location):
                    proven[step.location] = datetime.fromisoformat(result.tested_at)
                result.last_proven = {n: (proven[n].isoformat(timespec="seconds") if n in proven else None)
                                      for n in policy.restore_test_periods()}
            for key in store_report(result, required, name=step.report_name, prefix=REPORT_PREFIX,
                                    render=render_markdown):
                self.log.info("%s report written to %s", "full restore" if step.full else f"location {step.location}",
                              key)
            if result.error is None and not step.full:
                self.log.info("backup %s restored from %s%s: %d tables, %s s, full restore extrapolated to %s s",
                              result.backup_id, result.restored_from, " alone" if result.alone else "",
                              len(result.tables), result.restore_seconds, result.extrapolated_full_restore_seconds)
                for objective in result.objectives:
                    self.log.info("%s: RTO target %s: %s%s", objective.function, objective.target, objective.verdict,
                                  f" (not measured: {', '.join(objective.not_measured)})" if objective.not_measured else "")
            results.append(result)
        problems = restore_test_problems(results)
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
