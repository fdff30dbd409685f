"""ClusterLeaseFreeTrigger: waits in the triggerer until no other run holds the cluster lease."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from airflow.triggers.base import BaseTrigger, TriggerEvent


class ClusterLeaseFreeTrigger(BaseTrigger):
    """Read the cluster lease (continuity.failover.lease) every `poll_interval` seconds until no run other than
    `run_id` holds it in a majority of the storage locations. Storage errors are logged and retried (a lease that
    cannot be read is not a free one); the sensor's timeout bounds the wait.

    :param run_id: the waiting run (its own lease, from an earlier try, does not make it wait).
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    :param poll_interval: seconds between reads.
    """

    def __init__(self, *, run_id: str, policy_path: str | None = None, poll_interval: float = 10.0,
                 waiting_for: str | None = None) -> None:
        super().__init__()
        self.run_id = run_id
        self.policy_path = policy_path
        self.poll_interval = poll_interval
        self.waiting_for = waiting_for  # the holder the sensor saw, handed back in the event for the audit

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"run_id": self.run_id, "policy_path": self.policy_path, "poll_interval": self.poll_interval,
                 "waiting_for": self.waiting_for})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from continuity.hooks.failover import FailoverHook

        lease = await sync_to_async(lambda: FailoverHook(policy_path=self.policy_path).get_lease())()
        last_said = None
        while True:
            try:
                held = await sync_to_async(lease.holder)()
            except Exception as exc:  # storage slow or gone: keep waiting, the timeout bounds us
                self.log.info("cannot read the cluster lease yet (%s): retrying in %.0fs", type(exc).__name__,
                              self.poll_interval)
            else:
                if held is None or held.run_id == self.run_id:
                    yield TriggerEvent({"status": "free", "reason": "no other run holds the cluster lease",
                                        "waited_for": self.waiting_for})
                    return
                if held.describe() != last_said:
                    last_said = held.describe()
                    self.log.info("waiting: the cluster lease is held by %s", last_said)
            await asyncio.sleep(self.poll_interval)
