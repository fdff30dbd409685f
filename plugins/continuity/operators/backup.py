"""Operators over the backup engine: stream a command into a backup; verify a backup's copies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from continuity.storage.archive import ArchiveError
from continuity.backup.engine import SourceCommandFailed, backup_from_command, record_verification, verify_copy
from continuity.operators.base import ContinuityBackupOperator
from continuity.storage.keys import KeyringError


class StreamCommandToBackupOperator(ContinuityBackupOperator):
    """Run a command and stream its stdout, encrypted, into every storage location of the policy.

    Nothing is staged on local disk. Progress (bytes, MiB/s) is logged every few seconds. The backup
    id is returned (XCom); keys never are. A failing command, or a required location failing,
    leaves no backup anywhere and fails the task.

    :param command: argv of the command whose stdout is the backup (e.g. pg_dump ...).
    :param kind: manifest kind (logical, physical, wal, config, objects, adhoc).
    :param label: free text kept in the manifest.
    :param backup_id: id to use (default: KIND-TIMESTAMP-RANDOM).
    :param env: extra environment for the command (e.g. PGPASSWORD from a connection).
    :param details: extra manifest details.
    """

    template_fields: Sequence[str] = (*ContinuityBackupOperator.template_fields, "command", "kind", "backup_label",
                                      "backup_id", "details")
    ui_color = "#fdebd0"

    def __init__(self, *, command: Sequence[str], kind: str, label: str | None = None, backup_id: str | None = None,
                 env: dict[str, str] | None = None, details: dict[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.command = command
        self.kind = kind
        self.backup_label = label
        self.backup_id = backup_id
        self.env = env
        self.details = details

    def execute(self, context: Context) -> str:
        hook = self.hook()
        locations = hook.get_locations()
        self.log.info("backing up the output of %s into %s (required: %s)", self.command[0], ", ".join(locations),
                      ", ".join(sorted(hook.required_locations())))
        try:
            manifest = backup_from_command(
                list(self.command), env=self.env, details=self.details, kind=self.kind, keyring=hook.get_keyring(),
                locations=list(locations.values()), required=hook.required_locations(), backup_id=self.backup_id,
                label=self.backup_label, report=self.log.info,
            )
        except (SourceCommandFailed, KeyringError, ArchiveError) as exc:
            raise AirflowFailException(str(exc)) from exc
        return manifest.backup_id


class VerifyBackupOperator(ContinuityBackupOperator):
    """Verify every copy of a backup (shallow, or deep: decrypt and checksum every chunk).

    Each result is recorded in that location's manifest and logged; the task fails naming each
    bad copy. Returns the results (location, ok, depth, reason).

    :param backup_id: the backup to verify (templated, e.g. an upstream task's XCom).
    :param deep: decrypt every chunk (reads the whole backup) instead of checking size and presence.
    :param locations: restrict to these location names (default: every location holding it).
    """

    template_fields: Sequence[str] = (*ContinuityBackupOperator.template_fields, "backup_id", "locations")
    ui_color = "#d5f5e3"

    def __init__(self, *, backup_id: str, deep: bool = False, locations: Sequence[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.deep = deep
        self.locations = locations

    def execute(self, context: Context) -> list[dict[str, Any]]:
        hook = self.hook()
        catalog = hook.get_catalog()
        results = []
        for name, location in catalog.locations.items():
            if self.locations and name not in self.locations:
                continue
            try:
                manifest, _ = catalog.get(self.backup_id, location=name)
            except Exception as exc:  # a copy that cannot even be found or authenticated is a failed copy
                results.append({"location": name, "ok": False, "depth": "manifest", "reason": str(exc)})
                self.log.warning("FAIL: %s", exc)
                continue
            verification = verify_copy(manifest, location, catalog.keyring, deep=self.deep)
            record_verification(manifest, location, catalog.keyring, verification)
            (self.log.info if verification.ok else self.log.warning)("%s %s", "ok:  " if verification.ok else "FAIL:",
                                                                    verification.reason)
            results.append({"location": name, "ok": verification.ok, "depth": verification.depth,
                            "reason": verification.reason})
        bad = [r for r in results if not r["ok"]]
        if bad:
            raise AirflowFailException(f"backup {self.backup_id}: {len(bad)} bad copies: "
                                       + "; ".join(f"{r['location']}: {r['reason']}" for r in bad))
        return results
