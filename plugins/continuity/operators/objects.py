"""Operators of dr_object_replication: one category's objects to its replicas, verified."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.objects.replication import store_run_record

from continuity.objects.store import ReplicationError
from continuity.operators.base import ContinuityBackupOperator


class ReplicateObjectsOperator(ContinuityBackupOperator):
    """Copy every version of `category` created since its checkpoint to every replica, verified by
    SHA-256; record deletes, check the replicas' protection, measure the lag. The run record goes to
    `objects/<category>/runs/` in every required location and to XCom. Fails when a copy failed
    (the next run copies it again) or on an alarm (mass delete, protection drift, lag past the RPO
    maximum), after everything else was done.

    :param category: the object category of the policy's `objects` section.
    """

    template_fields: Sequence[str] = (*ContinuityBackupOperator.template_fields, "category")
    ui_color = "#d5f5e3"

    def __init__(self, *, category: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.category = category

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        rpo = hook.policy.data_categories[self.category].rpo
        try:
            replicator = hook.get_replicator(self.category, report=self.log.info)
            record = replicator.run(run_id=context["run_id"], rpo_target=rpo.target, rpo_maximum=rpo.maximum)
        except (ReplicationError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        for key in store_run_record(record, replicator.state):
            self.log.info("run record written to %s", key)
        for alarm in record.alarms:
            self.log.error("%s", alarm)
        if record.failed:
            raise AirflowFailException(
                f"{len(record.failed)} copies of {self.category} failed (first: {record.failed[0].key} -> "
                f"{record.failed[0].replica}: {record.failed[0].error}); the checkpoint stays before them, so the "
                f"next run copies them again")
        if record.alarms:
            raise AirflowFailException(record.alarms[0] + (f" (+{len(record.alarms) - 1} more alarms in the log)"
                                                           if len(record.alarms) > 1 else ""))
        return record.model_dump(mode="json")
