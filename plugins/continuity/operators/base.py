"""The bases of Continuity's operators: the policy file, and for backups the keyring connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from continuity.failover.records import TopologyRecord
from continuity.hooks.backup import ContinuityBackupHook
from continuity.hooks.topology import ContinuityPolicyHook, write_topology
from continuity.policy.model import Policy

_RUN_HOOK = "_continuity_hook_of_this_run"


class ContinuityOperator(BaseOperator):
    """An operator that reads the policy (through its hook, as it stands after any failover).

    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    template_fields: Sequence[str] = ("policy_path",)

    def __init__(self, *, policy_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy_path = policy_path

    def make_hook(self) -> ContinuityPolicyHook:
        return ContinuityPolicyHook(policy_path=self.policy_path)

    def hook(self) -> ContinuityPolicyHook:
        """This task run's hook, made at the first call: the policy file and the topology Variable are read
        once per run, as the amazon provider's operators cache their hooks. Nothing is kept between runs:
        Airflow executes each try on its own copy of the operator (`prepare_for_execution`). Kept in
        `__dict__` directly because a locked operator's `__setattr__` is Airflow's, not a cache's."""
        hook = self.__dict__.get(_RUN_HOOK)
        if hook is None:
            hook = self.__dict__[_RUN_HOOK] = self.make_hook()
        return hook

    @property
    def policy(self) -> Policy:
        return self.hook().policy

    def record_topology(self, record: TopologyRecord) -> None:
        """Write the new topology (continuity_topology) and forget this run's policy, so what the step reads
        next follows the new primary."""
        write_topology(record)
        self.__dict__.pop(_RUN_HOOK, None)


class ContinuityBackupOperator(ContinuityOperator):
    """:param keyring_conn_id: connection holding the keyring.
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    def __init__(self, *, keyring_conn_id: str = "continuity_keyring", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keyring_conn_id = keyring_conn_id

    def make_hook(self) -> ContinuityBackupHook:
        return ContinuityBackupHook(keyring_conn_id=self.keyring_conn_id, policy_path=self.policy_path)

    def hook(self) -> ContinuityBackupHook:
        return super().hook()  # type: ignore[return-value]  # made by make_hook
