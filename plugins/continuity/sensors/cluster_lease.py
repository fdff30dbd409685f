"""ClusterLeaseFreeSensor: a topology-changing run waits while another one holds the cluster lease."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.hooks.failover import FailoverHook
from continuity.triggers.cluster_lease import ClusterLeaseFreeTrigger

WAITED_FOR_KEY = "waited_for"  # XCom: the run whose lease this one waited for (absent: it did not wait)


class ClusterLeaseFreeSensor(BaseSensorOperator):
    """Wait until no other run (a drill's switchover, the region-loss exercise, another dr_failover) holds the
    cluster lease, so a run queued behind one decides afterwards, on the cluster as that run left it (the steps
    after this one check the target and the primary again). Waits in the triggerer (deferrable, the default):
    no worker slot is held. Its timeout (default: the policy's failover.lease_ttl, the longest a lease lives
    without renewal) fails the run naming the holder, before anything changed.

    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    :param deferrable: wait in the triggerer instead of poking from a worker slot.
    """

    template_fields: Sequence[str] = ("policy_path",)
    ui_color = "#fcf3cf"

    def __init__(self, *, policy_path: str | None = None, deferrable: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("poke_interval", 10)
        super().__init__(**kwargs)
        self.policy_path = policy_path
        self.deferrable = deferrable

    def _hook(self) -> FailoverHook:
        return FailoverHook(policy_path=self.policy_path)

    def poke(self, context: Context) -> bool:
        held = self._hook().get_lease().holder()
        if held is None or held.run_id == context["run_id"]:
            self.log.info("no other run holds the cluster lease")
            return True
        self.log.info("waiting: the cluster lease is held by %s", held.describe())
        if context["ti"].xcom_pull(task_ids=self.task_id, key=WAITED_FOR_KEY) is None:
            # For the audit (the record step reads it, whether the wait ended or timed out).
            context["ti"].xcom_push(key=WAITED_FOR_KEY, value=held.describe())
        self._seen = held.describe()
        return False

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if self.poke(context):
            return None
        self.defer(trigger=ClusterLeaseFreeTrigger(run_id=context["run_id"], policy_path=self.policy_path,
                                                   poll_interval=self.poke_interval,
                                                   waiting_for=getattr(self, "_seen", None)),
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "free":
            held = self._hook().get_lease().holder()
            raise AirflowFailException(f"the cluster lease stayed held by "
                                       f"{held.describe() if held else 'another run'}; nothing was changed")
        if event.get("waited_for"):
            context["ti"].xcom_push(key=WAITED_FOR_KEY, value=event["waited_for"])
            self.log.info("%s (waited for %s)", event["reason"], event["waited_for"])
        else:
            self.log.info("%s", event["reason"])
