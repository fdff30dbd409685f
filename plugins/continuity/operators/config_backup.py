"""ConfigBackupOperator: Airflow connections/variables, the policy and infrastructure state, encrypted."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path
from typing import Any

from airflow.sdk import Context

from continuity.backup.engine import create_backup
from continuity.backup.config import collect
from continuity.operators.base import ContinuityBackupOperator
from continuity.policy.project import policy_path


class ConfigBackupOperator(ContinuityBackupOperator):
    """Back up the deployment's configuration as one `config` backup in every location.

    Returns the backup id and counts only: secrets stay inside the encrypted archive.
    """

    ui_color = "#fdebd0"

    def execute(self, context: Context) -> dict[str, Any]:
        hook = self.hook()
        policy_file = Path(self.policy_path) if self.policy_path else policy_path()
        airflow = shutil.which("airflow") or str(Path(sys.executable).with_name("airflow"))
        bundle = collect(policy_path=policy_file, airflow=airflow if Path(airflow).exists() else None,
                         state_files=hook.policy.backups.configuration.infrastructure_state_files)
        for note in bundle.notes:
            self.log.info("%s", note)
        moment = context.get("logical_date") or context["dag_run"].run_after
        backup_id = f"config-{moment:%Y%m%dT%H%M%SZ}"
        if hook.exists_everywhere(backup_id):
            self.log.info("backup %s already exists in every required location: nothing to do", backup_id)
            return {"backup_id": backup_id, "files": []}
        manifest = create_backup(io.BytesIO(bundle.tar()), kind="config", keyring=hook.get_keyring(),
                                 locations=list(hook.get_locations().values()), required=hook.required_locations(),
                                 backup_id=backup_id,
                                 details={"files": sorted(bundle.files)}, report=self.log.info)
        return {"backup_id": manifest.backup_id, "files": sorted(bundle.files)}
