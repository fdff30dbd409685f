"""The health checks of dr_health_monitor, built from Airflow connections: one place for the operators
(each check a task) and the triggerer's 30-second probe rounds (every check at once)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from continuity.health.checks import (Check, check_application, check_degraded, check_primary, check_standbys,
                                     check_storage)
from continuity.storage.degraded import outstanding
from continuity.storage.locations import locations_from_policy
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.hooks.topology import ContinuityPolicyHook
from continuity.health.availability import FunctionState, store_states
from continuity.health.monitoring import ProbeRound, check_latency, run_round
from continuity.policy.model import Policy
from continuity.postgres.node import PostgresNode


def node_for(conn_id: str, name: str) -> PostgresNode:
    return PostgresNodeHook(postgres_conn_id=conn_id, node_name=name).get_node()


class HealthProbeHook(ContinuityPolicyHook):
    """Database, network, storage and application checks of the current topology (after any failover)."""

    def database_checks(self, policy: Policy | None = None) -> list[Check]:
        policy = policy or self.policy
        topology = policy.topology
        primary = node_for(topology.primary.conn_id, topology.primary.name)
        standbys = {node.name: node_for(node.conn_id, node.name) for node in topology.standbys}
        return check_primary(policy, primary) + check_standbys(policy, primary, standbys)

    def latency_checks(self, policy: Policy | None = None) -> list[Check]:
        policy = policy or self.policy
        nodes = {node.name: node_for(node.conn_id, node.name) for node in policy.topology.nodes}
        return check_latency(nodes, limit_seconds=policy.health_monitor.max_latency.total_seconds())

    def storage_checks(self, policy: Policy | None = None, *, application_buckets: bool = False) -> list[Check]:
        """Every storage location (S3 head_bucket, or a writable directory); with `application_buckets`,
        the serving region's application bucket too."""
        policy = policy or self.policy

        def probe(name: str) -> None:
            location = policy.storage.location(name)
            if location.kind == "s3":
                self.s3_client(location.conn_id, location.region).head_bucket(Bucket=location.bucket)
            else:
                path = Path(location.path or "")
                if not path.is_dir() or not os.access(path, os.W_OK):
                    raise FileNotFoundError(f"{path} is not a writable directory")

        checks = check_storage(policy, probe)
        # The backups a required location is missing (stored elsewhere while it did not answer): one listing
        # of each location's markers.
        locations = locations_from_policy(policy, lambda loc: self.s3_client(loc.conn_id, loc.region))
        checks += check_degraded(policy, *outstanding(locations))
        if application_buckets and policy.application is not None:
            region = policy.topology.primary.region
            spec = policy.application.regions.get(region)
            conn_id = next((loc.conn_id for loc in policy.storage.locations if loc.region == region and loc.conn_id),
                           None)
            if spec is not None and conn_id is not None:
                subject = f"application bucket {spec.video_bucket}"
                try:
                    self.s3_client(conn_id, region).head_bucket(Bucket=spec.video_bucket)
                    checks.append(Check("storage", subject, True, f"{spec.video_bucket} ({region}) is reachable"))
                except Exception as exc:  # unreachable storage is the finding
                    checks.append(Check("storage", subject, False,
                                        f"{spec.video_bucket} ({region}) is unreachable: {type(exc).__name__}: {exc}"))
        return checks

    def application_checks(self, policy: Policy | None = None) -> list[Check]:
        from continuity.hooks.application import ApplicationProbeHook

        policy = policy or self.policy
        if policy.application is None:
            return []
        return check_application(ApplicationProbeHook(policy=policy, region=policy.topology.primary.region).run())

    def probe_round(self) -> ProbeRound:
        """Every check once, weighed: one round of the 30-second monitor."""
        policy = self.policy  # re-read each round: a failover changes the primary
        groups: list[Callable[[], list[Check]]] = []
        for name, method in (("database", self.database_checks), ("network latency", self.latency_checks),
                             ("storage", lambda p: self.storage_checks(p, application_buckets=True)),
                             ("application", self.application_checks)):
            def group(method=method, policy=policy) -> list[Check]:
                return method(policy)
            group.__name__ = f"{name} checks"
            groups.append(group)
        return run_round(policy, groups, region=policy.topology.primary.region)

    def record_availability(self, states: list[FunctionState]) -> int:
        """Store each function's change of state in every required location that answers; returns how many took
        them (0: none answered, the caller keeps them for the next round)."""
        policy = self.policy
        locations = locations_from_policy(policy, lambda loc: self.s3_client(loc.conn_id, loc.region))
        return store_states([locations[name] for name in sorted(policy.storage.required())], states,
                            report=self.log.warning)
