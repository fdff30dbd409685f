"""WalArchivedSensor: succeeds once the primary has archived a given WAL segment."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.hooks.topology import ContinuityPolicyHook
from continuity.triggers.wal_archived import WalArchivedTrigger
from continuity.backup.wal import ArchiverFailing, segment_archived


class WalArchivedSensor(BaseSensorOperator):
    """Wait until the current primary's archiver has archived `segment`; fail at once, naming the
    failed file, when the archiver is failing.

    The first check runs in the task; if the segment is not archived yet the wait continues in the
    triggerer (deferrable, the default) so no worker slot is held.

    :param segment: the WAL file name (templated; e.g. the XCom of `switch_wal`).
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    :param deferrable: wait in the triggerer instead of poking from a worker slot.
    """

    template_fields: Sequence[str] = ("segment", "policy_path")
    ui_color = "#fcf3cf"

    def __init__(self, *, segment: str, policy_path: str | None = None, deferrable: bool = True,
                 **kwargs: Any) -> None:
        kwargs.setdefault("timeout", 60)
        kwargs.setdefault("poke_interval", 1)
        super().__init__(**kwargs)
        self.segment = segment
        self.policy_path = policy_path
        self.deferrable = deferrable

    def _primary(self) -> tuple[str, str]:
        primary = ContinuityPolicyHook(policy_path=self.policy_path).policy.topology.primary
        return primary.conn_id, primary.name

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            super().execute(context)
            return self.segment
        if self.poke(context):
            return self.segment
        conn_id, node = self._primary()
        self.defer(trigger=WalArchivedTrigger(conn_id=conn_id, node=node, segment=self.segment,
                                              poll_interval=self.poke_interval),
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout))

    def poke(self, context: Context) -> bool:
        conn_id, node = self._primary()
        status = PostgresNodeHook(postgres_conn_id=conn_id, node_name=node).get_node().archiver()
        try:
            done, reason = segment_archived(status, self.segment, node=node)
        except ArchiverFailing as exc:
            raise AirflowFailException(str(exc)) from exc
        self.log.info("%s", reason)
        return done

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        if not event or event.get("status") != "archived":
            raise AirflowFailException((event or {}).get("reason") or f"the archive wait for {self.segment} ended "
                                                                      f"without an event")
        self.log.info("%s", event["reason"])
        return self.segment
