"""The base of operators that work with backups: the keyring connection and the policy file."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator

from continuity.hooks.backup import ContinuityBackupHook


class ContinuityBackupOperator(BaseOperator):
    """:param keyring_conn_id: connection holding the keyring.
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    template_fields: Sequence[str] = ("policy_path",)

    def __init__(self, *, keyring_conn_id: str = "continuity_keyring", policy_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keyring_conn_id = keyring_conn_id
        self.policy_path = policy_path

    def hook(self) -> ContinuityBackupHook:
        return ContinuityBackupHook(keyring_conn_id=self.keyring_conn_id, policy_path=self.policy_path)
