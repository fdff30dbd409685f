"""ContinuityIncidentHook: where incidents are kept, the status page written, the banner published,
and the senders each channel goes through."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from continuity.hooks.backup import ContinuityBackupHook
from continuity.incidents.journal import LocalJournal, default_journal_dir
from continuity.incidents.records import IncidentStore, Sender
from continuity.objects.store import ObjectStore
from continuity.storage.locations import StorageLocation


class ContinuityIncidentHook(ContinuityBackupHook):
    """Incidents live in every required storage location (any one region shows them all)."""

    hook_name = "Continuity incidents"

    def incident_locations(self) -> list[StorageLocation]:
        locations = self.get_locations()
        return [locations[name] for name in sorted(self.required_locations())]

    def get_journal(self) -> LocalJournal:
        """Where a record that misses a location waits for it on this machine (`continuity.incidents.journal`)."""
        return LocalJournal(default_journal_dir())

    def get_store(self) -> IncidentStore:
        return IncidentStore(self.incident_locations(), journal=self.get_journal())

    def get_banners(self) -> list[ObjectStore]:
        communication = self.policy.communication
        return [ObjectStore.for_bucket(bucket, self.s3_client)
                for bucket in (communication.banners if communication else [])]

    def get_senders(self, context: Mapping[str, Any], store: IncidentStore) -> dict[str, Sender]:
        from continuity.notifiers.incident import channel_senders

        return channel_senders(self.policy, context, store=store, status_locations=store.locations,
                               banners=self.get_banners())
