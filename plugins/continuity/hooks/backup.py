"""ContinuityBackupHook: the keyring and the storage locations of the policy, from Airflow connections."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

from continuity.storage.catalog import Catalog
from continuity.hooks.topology import ContinuityPolicyHook
from continuity.storage.keys import KEYRING_CONN_ID, Keyring
from continuity.objects.replication import Replicator, replicas_in, replicator_for
from continuity.objects.restore import FailBack, fail_back
from continuity.objects.store import ObjectStore
from continuity.storage.locations import StorageError, StorageLocation, locations_from_policy


class ContinuityBackupHook(ContinuityPolicyHook):
    """Builds what the backup engine needs from connections.

    :param keyring_conn_id: connection holding the keyring (password: keyring JSON or one base64
        key whose id is the login; or extra ``kms_key_id`` + ``aws_conn_id`` for AWS KMS).
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    :param follow_topology: apply the topology dr_failover recorded (a Variable) to the policy; off
        where Variables are not readable (deadline callbacks) and only storage is needed.
    """

    conn_name_attr = "keyring_conn_id"
    default_conn_name = KEYRING_CONN_ID
    hook_name = "Continuity backups"

    def __init__(self, *, keyring_conn_id: str = default_conn_name, policy_path: str | None = None,
                 follow_topology: bool = True) -> None:
        super().__init__(policy_path=policy_path, follow_topology=follow_topology)
        self.keyring_conn_id = keyring_conn_id

    def get_keyring(self) -> Keyring:
        conn = self.get_connection(self.keyring_conn_id)
        extra = conn.extra_dejson
        kms_client = None
        if extra.get("kms_key_id"):
            kms_client = AwsBaseHook(aws_conn_id=extra.get("aws_conn_id", "aws_default"), client_type="kms").get_conn()
        return Keyring.from_connection(login=conn.login, password=conn.password, extra=extra,
                                       conn_id=self.keyring_conn_id, kms_client=kms_client)

    def get_locations(self) -> dict[str, StorageLocation]:
        return locations_from_policy(self.policy, lambda location: self.s3_client(location.conn_id, location.region))

    def required_locations(self) -> set[str]:
        return self.policy.storage.required()

    def get_replicator(self, category: str, *, report: Any) -> Replicator:
        """The object category's replicator: one S3 client per bucket connection, the checkpoint and run
        records in the required locations."""
        locations = self.get_locations()
        state = {name: locations[name] for name in sorted(self.required_locations())}
        return replicator_for(self.policy, category, state=state, report=report,
                              client_for=self.s3_client)

    def objects_going_home(self, *, from_region: str, to_region: str, since: datetime | None,
                           report: Callable[[str], None]) -> Callable[[], list[FailBack]] | None:
        """When the application returns to the region its object categories' sources are in, from a region
        holding their replicas: the copy home of what it wrote there since `since` (None: every version,
        when the time it took over is not known). None when nothing goes home."""
        policy = self.policy
        categories = [name for name, spec in (policy.objects.categories.items() if policy.objects else [])
                      if spec.source.region == to_region and any(r.region == from_region for r in spec.replicas)]
        if not categories:
            return None

        def carry() -> list[FailBack]:
            done = []
            for name in categories:
                replicator = self.get_replicator(name, report=report)
                for written in replicator.replicas.values():
                    if written.region == from_region:
                        done.append(fail_back(category=name, written=written, home=replicator.source, since=since,
                                              part_size=replicator.part_size, report=report))
            return done

        return carry

    def get_object_replicas(self, region: str) -> dict[str, tuple[ObjectStore, str]]:
        """Each object category's replica in `region`, with its source's prefix (see `objects.replicas_in`)."""
        return replicas_in(self.policy, region, client_for=self.s3_client)

    def get_catalog(self) -> Catalog:
        return Catalog(self.get_locations(), self.get_keyring())

    def exists_everywhere(self, backup_id: str) -> bool:
        """True when an authentic copy is in every required location (a rerun of the same date)."""
        catalog = self.get_catalog()
        for name in self.required_locations():
            try:
                catalog.get(backup_id, location=name)
            except StorageError:
                return False
        return True

    def get_conn(self) -> Catalog:
        return self.get_catalog()
