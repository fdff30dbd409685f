"""SampleRestoreTestOperator: the weekly cross-region sample restore with its report."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.operators.base import ContinuityBackupOperator
from continuity.reports import store_report
from continuity.restore import RestoreError, scratch_prefix
from continuity.restore_test import REPORT_PREFIX, failure_result, render_markdown, run_sample_restore_test
from continuity.storage import key_safe


class SampleRestoreTestOperator(ContinuityBackupOperator):
    """Restore a sample of a DR-region logical backup into a scratch cluster, validate it with Great
    Expectations, measure and extrapolate the restore time against the RTO targets, and write the
    report (JSON + Markdown) to every required location. The scratch cluster is always removed.
    Fails, after writing the report, naming each expectation that broke."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        catalog = hook.get_catalog()
        name = key_safe(context["run_id"])
        required = [catalog.locations[n] for n in sorted(hook.required_locations())]
        try:
            result = run_sample_restore_test(catalog=catalog, policy=hook.policy, seed=context["run_id"],
                                             report=self.log.info, scratch_prefix=scratch_prefix(context["run_id"]),
                                             object_replicas=hook.get_object_replicas(hook.policy.topology.dr_region))
        except RestoreError as exc:
            for key in store_report(failure_result(error=str(exc), seed=context["run_id"]), required, name=name,
                                    prefix=REPORT_PREFIX, render=render_markdown):
                self.log.info("failure report written to %s", key)
            raise AirflowFailException(f"restore test failed: {exc}") from exc
        for key in store_report(result, required, name=name, prefix=REPORT_PREFIX, render=render_markdown):
            self.log.info("report written to %s", key)
        self.log.info("backup %s restored from %s: %d tables, %s s, full restore extrapolated to %s s",
                      result.backup_id, result.restored_from, len(result.tables), result.restore_seconds,
                      result.extrapolated_full_restore_seconds)
        for objective in result.objectives:
            self.log.info("%s: RTO target %s: %s%s", objective.function, objective.target, objective.verdict,
                          f" (not measured: {', '.join(objective.not_measured)})" if objective.not_measured else "")
        if not result.success:
            raise AirflowFailException("restore test failed: " + "; ".join(result.failed_checks or ["RTO maximum exceeded"]))
        return result.model_dump(mode="json", include={"backup_id", "restored_from", "corrupt_copies", "tables",
                                                       "restore_seconds", "extrapolated_full_restore_seconds", "success"})
