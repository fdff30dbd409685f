"""The S3 endpoint (moto's server), each region's gateway, the buckets, the first backups and objects (one part of `continuity_lab.sandbox.Sandbox`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from continuity_lab import sampledata
from continuity.postgres.cluster import (free_port, pid_alive, port_is_free, scrubbed_environment, stop_pid,
                                         wait_for_port)
from continuity.policy.project import policy_path
from continuity.waiting import poll
from continuity_lab.processes import ChunkReader, S3_ACCESS_KEY, is_our_process

log = logging.getLogger(__name__)


class StoragePart:
    """The S3 endpoint (moto's server), each region's gateway, the buckets, the first backups and objects."""

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.state['s3']['port']}"

    def region_s3_endpoint(self, region: str) -> str:
        """How `region`'s clients reach S3: through the region's gateway (every region has one since a sandbox's
        first `up` after gateways were per region), else the endpoint itself."""
        gateway = self.state.get("gateways", {}).get(region)
        return f"http://127.0.0.1:{gateway['port']}" if gateway else self.s3_endpoint

    # -- S3 ----------------------------------------------------------------------------------
    def _start_s3(self, started: list[str]) -> None:
        s3 = self.state["s3"]
        if pid_alive(s3.get("pid")):
            return
        if not port_is_free(s3["port"]):
            # The endpoint keeps no data across restarts (buckets are recreated): any port will do.
            old_port, s3["port"] = s3["port"], free_port()
            log.info("the S3 endpoint's port %s is taken by another process; using %s", old_port, s3["port"])
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "s3.log", "ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3["port"])],
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.root,
                env={**os.environ, "CONTINUITY_SANDBOX_ROOT": str(self.root)},
            )
        s3["pid"] = process.pid
        started.append("s3 endpoint")
        self._save_state()
        wait_for_port(s3["port"], what="the S3 endpoint (moto server)")
        self._create_buckets()
        self.seed_objects()

    def _start_gateways(self, started: list[str], *, only: str | None = None) -> None:
        """Each region's network edge to S3 (continuity_lab.gateway): every client of a region's storage goes
        through it, so stopping it (a region-loss exercise, a storage outage) cuts that region's buckets for real."""
        gateways = self.state.setdefault("gateways", {})
        regions = {location.region for location in self.policy.storage.locations} | {
            node.region for node in self.policy.topology.nodes}
        for region in sorted(regions):
            if only is not None and region != only:
                continue
            entry = gateways.setdefault(region, {"port": free_port(), "pid": None})
            if is_our_process(entry.get("pid"), "continuity_lab.gateway"):
                continue
            if not port_is_free(entry["port"]):
                # Connections name this port: a new one means rewriting them (and restarting Airflow).
                entry["port"] = free_port()
            self.logs_dir.mkdir(parents=True, exist_ok=True)
            with open(self.logs_dir / f"gateway-{region}.log", "ab") as log_handle:
                process = subprocess.Popen(
                    [sys.executable, "-m", "continuity_lab.gateway", "--listen", str(entry["port"]),
                     "--upstream", str(self.state["s3"]["port"]),
                     *(["--rate", str(entry["rate"])] if entry.get("rate") else [])],
                    stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    cwd=self.root, env=scrubbed_environment({k: v for k, v in os.environ.items() if k == "PYTHONPATH"}))
            entry["pid"] = process.pid
            started.append(f"s3 gateway {region}")
            self._save_state()
            wait_for_port(entry["port"], what=f"the S3 gateway of {region}")

    def cut_storage(self, region: str) -> bool:
        """`region`'s buckets unreachable for every client (its gateway stopped; the data stays behind it).
        False when they already were."""
        self.reload()
        return self._stop_gateway(region)

    def slow_storage(self, region: str, bytes_per_second: int | None) -> None:
        """Every connection to `region`'s buckets carries at most `bytes_per_second` each way from now on (None:
        full speed again): its gateway is started again with the rate, so connections open at the change are
        cut (clients retry, as after a network blip)."""
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError(f"slow_storage({region!r}): the rate must be a positive number of bytes per second, "
                             f"not {bytes_per_second}")
        self.reload()
        entry = self.state.get("gateways", {}).get(region)
        if entry is None:
            raise ValueError(f"slow_storage: no S3 gateway for region {region!r} "
                             f"(known: {', '.join(sorted(self.state.get('gateways', {}))) or 'none'})")
        self._stop_gateway(region)
        entry["rate"] = bytes_per_second
        self._save_state()
        self._start_gateways([], only=region)

    def restore_storage(self) -> list[str]:
        """Every region's buckets reachable again (the gateways that were stopped, started on their ports)."""
        self.reload()
        started: list[str] = []
        self._start_gateways(started)
        return started

    def _stop_gateway(self, region: str) -> bool:
        entry = self.state.get("gateways", {}).get(region)
        if entry and is_our_process(entry.get("pid"), "continuity_lab.gateway"):
            stop_pid(entry["pid"], name=f"S3 gateway {region}", sig=signal.SIGTERM)
            entry["pid"] = None
            self._save_state()
            return True
        return False

    def s3_client(self, region: str = "us-east-1", *, through_gateway: bool = True) -> Any:
        """A client of `region`'s buckets through the region's gateway, as every client of that region's storage
        reaches it (so a cut gateway cuts them all, as a real outage does); `through_gateway=False` only for the
        sandbox's own setup (creating and seeding buckets, before the gateways run)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.region_s3_endpoint(region) if through_gateway else self.s3_endpoint,
            region_name=region,
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=self.password("s3_secret_key"),
        )

    def storage_locations(self) -> dict[str, Any]:
        """The policy's storage locations, reached through this sandbox's S3 endpoint."""
        from continuity.storage.locations import locations_from_policy

        return locations_from_policy(self.policy, lambda loc: self.s3_client(loc.region), base_dir=self.root)

    def catalog(self) -> Any:
        from continuity.storage.catalog import Catalog

        return Catalog(self.storage_locations(), self.keyring())

    def take_first_backups(self, *, report: Any = log.info) -> list[str]:
        """A fresh install starts protected: one backup of each scheduled kind (logical, physical, config,
        WAL) that the catalog does not hold yet, so the first scheduled runs find something to verify,
        restore and drill. Returns the ids taken (empty when every kind exists)."""
        import io

        from continuity.backup.engine import create_backup
        from continuity.backup.config import collect
        from continuity.backup.full import logical_backup, physical_backup
        from continuity.backup.wal import ship_spool

        catalog = self.catalog()
        present = {m.kind for m in catalog.list()}
        locations = list(catalog.locations.values())
        required = self.policy.storage.required()
        keyring = self.keyring()
        stamp = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-first"
        primary = self.current_primary()
        common = {"keyring": keyring, "locations": locations, "required": required, "report": lambda _m: None}
        taken: list[str] = []
        if "logical" not in present:
            for database in self.policy.topology.databases:
                report(f"first backup: logical dump of {database}")
                taken.append(logical_backup(node=self.backup_node(primary), database=database,
                                            backup_id=f"logical-{database}-{stamp}", **common).backup_id)
        if "physical" not in present:
            source = self.policy.backups.full.backup_from_standby or primary
            report(f"first backup: base backup from {source}")
            taken.append(physical_backup(node=self.backup_node(source), backup_id=f"physical-{source}-{stamp}",
                                         **common).backup_id)
        if "config" not in present:
            report("first backup: configuration")
            policy_file = policy_path()
            bundle = collect(policy_path=policy_file, airflow=None, environ=self.environment(),
                             state_files=self.policy.backups.configuration.infrastructure_state_files)
            taken.append(create_backup(io.BytesIO(bundle.tar()), kind="config", backup_id=f"config-{stamp}",
                                       details={"files": sorted(bundle.files)}, **common).backup_id)
        if "wal" not in present or taken:
            # Close the current segment so the base backup's WAL is in the spool, then ship it all.
            node = self.node(primary)
            closed = node.query_one("SELECT pg_walfile_name(pg_switch_wal()) AS name")["name"]
            poll(lambda: (node.archiver().last_archived_wal or "")[:24] >= closed, timeout=60)
            shipped = ship_spool(self.spool_dir, keyring=keyring, locations=catalog.locations, required=required,
                                 report=lambda _m: None)
            report(f"first backup: {len(shipped.shipped)} WAL files shipped")
            taken.extend(f"wal-{name}" for name in shipped.shipped)
        taken += self.replicate_objects(report=report)
        return taken

    def replicate_objects(self, *, report: Any = log.info) -> list[str]:
        """One replication of every object category whose checkpoint says it never completed (what
        dr_object_replication does, without Airflow): a fresh install's drill finds the objects."""
        from continuity.objects.ledger import load_checkpoint
        from continuity.objects.replication import replicator_for

        if self.policy.objects is None:
            return []
        locations = self.storage_locations()
        required = self.policy.storage.required()
        state = {name: location for name, location in locations.items() if name in required}
        done = []
        for category in self.policy.objects.categories:
            if load_checkpoint(category, state).complete_at is not None:
                continue
            record = replicator_for(self.policy, category, state=state, report=lambda _m: None,
                                    client_for=lambda _conn_id, region: self.s3_client(region)).run(
                run_id=f"first-{category}")
            report(f"first replication: {record.copied} objects of {category} in the DR region")
            done.append(f"objects-{category}")
        return done

    def _create_buckets(self) -> None:
        for location in self.policy.storage.locations:
            if location.kind == "file":
                path = Path(location.path or "")
                (path if path.is_absolute() else self.root / path).mkdir(parents=True, exist_ok=True)
                continue
            client = self.s3_client(location.region, through_gateway=False)
            kwargs: dict[str, Any] = {"Bucket": location.bucket}
            if location.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": location.region}
            try:
                client.create_bucket(**kwargs)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            client.put_bucket_versioning(Bucket=location.bucket, VersioningConfiguration={"Status": "Enabled"})
            log.info("bucket %s (%s, location %s) ready with versioning", location.bucket, location.region, location.name)
        for bucket, lock in self.application_buckets():
            client = self.s3_client(bucket.region, through_gateway=False)
            kwargs = {"Bucket": bucket.bucket}
            if bucket.region != "us-east-1":
                kwargs["CreateBucketConfiguration"] = {"LocationConstraint": bucket.region}
            if lock is not None:
                # As infrastructure code creates a replica: object lock on from the start (it can only be
                # switched on at creation) with the policy's default retention. dr_object_replication
                # checks both on every run.
                kwargs["ObjectLockEnabledForBucket"] = True
            try:
                client.create_bucket(**kwargs)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass
            client.put_bucket_versioning(Bucket=bucket.bucket, VersioningConfiguration={"Status": "Enabled"})
            if lock is not None and not client.list_objects_v2(Bucket=bucket.bucket, MaxKeys=1).get("KeyCount"):
                client.put_object_lock_configuration(Bucket=bucket.bucket, ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled",
                    "Rule": {"DefaultRetention": {"Mode": lock.mode, "Days": lock.period.days}}})
            log.info("application bucket %s (%s) ready with versioning%s", bucket.bucket, bucket.region,
                     " and object lock" if lock is not None else "")

    def application_buckets(self) -> list[tuple[Any, Any]]:
        """The application's buckets of the policy's objects section: (bucket, the replica's object lock or None)."""
        if self.policy.objects is None:
            return []
        found: list[tuple[Any, Any]] = []
        for category in self.policy.objects.categories.values():
            found.append((category.source, None))
            found += [(replica, category.object_lock) for replica in category.replicas]
        return found

    def seed_objects(self, *, scale: float | None = None) -> dict[str, int]:
        """Put the sample application's objects into its source buckets: one per `videos` row (the bytes
        its size and SHA-256 describe) and the user uploads. Only into an empty prefix (the endpoint
        keeps nothing across restarts, so a restart seeds again); returns the objects put per category."""
        from boto3.s3.transfer import TransferConfig

        if self.policy.objects is None:
            return {}
        scale = scale if scale is not None else self.state.get("scale", 1.0)
        put: dict[str, int] = {}
        transfer = TransferConfig(multipart_threshold=self.policy.objects.part_size,
                                  multipart_chunksize=self.policy.objects.part_size, max_concurrency=2)
        for name, category in self.policy.objects.categories.items():
            source = category.source
            client = self.s3_client(source.region, through_gateway=False)
            if client.list_objects_v2(Bucket=source.bucket, Prefix=source.prefix, MaxKeys=1).get("KeyCount"):
                continue
            if category.database_reference is not None:
                reference = category.database_reference
                with psycopg.connect(self.app_conninfo(through_pgbouncer=False)) as conn:
                    rows = conn.execute(sql.SQL("SELECT {}, {} FROM {} ORDER BY 1").format(
                        sql.Identifier(reference.key_column),
                        sql.Identifier(reference.size_column or "size_bytes"),
                        sql.Identifier(reference.table))).fetchall()
            else:
                rows = list(sampledata.upload_objects(scale))
            for key, size in rows:
                client.upload_fileobj(ChunkReader(sampledata.object_chunks(key, size)), source.bucket, key,
                                      Config=transfer)
            put[name] = len(rows)
            log.info("seeded %d objects of %s into %s/%s", len(rows), name, source.bucket, source.prefix)
        return put
