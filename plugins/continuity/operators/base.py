"""The bases of Continuity's operators: the policy file, and for backups the keyring connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from continuity.hooks.backup import ContinuityBackupHook
from continuity.hooks.topology import ContinuityPolicyHook
from continuity.policy.model import Policy


class ContinuityOperator(BaseOperator):
    """An operator that reads the policy (through its hook, as it stands after any failover).

    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    template_fields: Sequence[str] = ("policy_path",)

    def __init__(self, *, policy_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.policy_path = policy_path

    def hook(self) -> ContinuityPolicyHook:
        return ContinuityPolicyHook(policy_path=self.policy_path)

    @property
    def policy(self) -> Policy:
        return self.hook().policy


class ContinuityBackupOperator(ContinuityOperator):
    """:param keyring_conn_id: connection holding the keyring.
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    def __init__(self, *, keyring_conn_id: str = "continuity_keyring", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keyring_conn_id = keyring_conn_id

    def hook(self) -> ContinuityBackupHook:
        return ContinuityBackupHook(keyring_conn_id=self.keyring_conn_id, policy_path=self.policy_path)
