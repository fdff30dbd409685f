"""FailoverHook: the cluster a failover acts on, built from Airflow connections and the policy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from continuity.failover.guard import Deposer, deposer_for
from continuity.failover.lease import ClusterLease, LeaseRecord
from continuity.failover.steps import ReplicationGroup
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.failover.nodecontrol import NodeControl, node_control_for
from continuity.failover.router import Endpoint, PgBouncerRouter, Route53Router, Router
from continuity.failover.sshcontrol import ParamikoShell, RemoteShell
from continuity.hooks.topology import ContinuityPolicyHook


class FailoverHook(ContinuityPolicyHook):
    """Admin connections to every node (their `conn_id`s), the entry point's router (PgBouncer's admin
    connection plus a generic connection with `extra.ini_path`, or a Route 53 record through an AWS
    connection with `extra.zone_id`/`extra.record_name`), and host-level node control (over SSH: each
    node's `host.ssh_conn_id`, an SSH connection of the SSH provider).

    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    """

    hook_name = "Continuity failover"

    def __init__(self, *, policy_path: str | None = None) -> None:
        super().__init__(policy_path=policy_path)

    def get_router(self) -> Router:
        entry = self.policy.topology.entry_point
        if entry.kind == "pgbouncer":
            if not entry.admin_conn_id or not entry.config_conn_id:
                raise ValueError("policy.yaml: topology.entry_point: a PgBouncer entry point needs admin_conn_id (its "
                                 "admin console, to pause and reload it) and config_conn_id (a generic connection "
                                 "whose extra.ini_path names its ini file) to be repointed")
            ini_path = self.get_connection(entry.config_conn_id).extra_dejson.get("ini_path")
            if not ini_path:
                raise ValueError(f"connection {entry.config_conn_id}: extra.ini_path (PgBouncer's ini file) is required")
            admin = PostgresNodeHook(postgres_conn_id=entry.admin_conn_id, database="pgbouncer").get_node().conninfo
            return PgBouncerRouter(admin_conninfo=admin, ini_path=ini_path,
                                   database=entry.database or self.policy.topology.databases[0])
        if entry.kind == "route53":
            from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook

            conn_id = entry.admin_conn_id or entry.conn_id
            extra = self.get_connection(conn_id).extra_dejson
            client = AwsBaseHook(aws_conn_id=conn_id, client_type="route53").get_conn()
            return Route53Router(client=client, zone_id=extra["zone_id"], record_name=extra["record_name"],
                                 record_type=extra.get("record_type", "CNAME"), hostnames=extra.get("hostnames"))
        raise ValueError(f"entry point kind {entry.kind!r} cannot be repointed automatically")

    def get_cluster(self, *, report: Callable[[str], None], control: NodeControl | None = None) -> ReplicationGroup:
        topology = self.policy.topology
        nodes, endpoints = {}, {}
        for node in topology.nodes:
            hook = PostgresNodeHook(postgres_conn_id=node.conn_id, node_name=node.name)
            nodes[node.name] = hook.get_node()
            conn = hook.get_connection(node.conn_id)
            endpoints[node.name] = Endpoint(node=node.name, host=conn.host or "localhost", port=conn.port or 5432)
        app = PostgresNodeHook(postgres_conn_id=topology.entry_point.conn_id).get_node().conninfo
        return ReplicationGroup(policy=self.policy, nodes=nodes, endpoints=endpoints,
                       control=control or self.get_node_control(), router=self.get_router(),
                       app_conninfo=app, report=report, deposer=self.get_deposer())

    def get_deposer(self) -> Deposer | None:
        """The deposition notices for the guards beside the nodes, when the policy says guards run."""
        from continuity.hooks.backup import ContinuityBackupHook

        return deposer_for(self.policy, lambda: ContinuityBackupHook(policy_path=self.policy_path).get_locations().values())

    def get_node_control(self) -> NodeControl:
        return node_control_for(self.policy, shell_for=self._ssh_shell)

    def _ssh_shell(self, node_name: str) -> RemoteShell:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        conn_id = self.policy.topology.node(node_name).host.ssh_conn_id
        # Connected on first use: a host that is gone fails only the actions on it.
        return ParamikoShell(connect=lambda: SSHHook(ssh_conn_id=conn_id).get_conn(),
                             describe=f"node {node_name} (SSH connection {conn_id})")

    def get_lease(self) -> ClusterLease:
        """The cluster lease, in every storage location of the policy (a majority holds it)."""
        from continuity.hooks.backup import ContinuityBackupHook

        locations = ContinuityBackupHook(policy_path=self.policy_path).get_locations()
        return ClusterLease(list(locations.values()), ttl=self.policy.failover.lease_ttl)

    def take_lease(self, *, run_id: str, holder: str, purpose: str) -> LeaseRecord:
        """The lease for this run, or LeaseHeld naming the run that holds it (nothing changed yet)."""
        record = self.get_lease().acquire(holder=holder, run_id=run_id, purpose=purpose)
        self.log.info("cluster lease taken: %s", record.describe())
        return record

    def renew_lease(self, run_id: str) -> None:
        """Push on the expiry of this run's lease, if it holds one (a step between taking and giving back)."""
        lease = self.get_lease()
        held = lease.holder()
        if held is not None and held.run_id == run_id:
            self.log.info("cluster lease renewed: %s", lease.renew(held).describe())

    def give_back_lease(self, run_id: str) -> None:
        released = self.get_lease().release(run_id)
        if released:
            self.log.info("cluster lease given back (%s)", ", ".join(released))

    def get_conn(self) -> Any:
        return self.get_cluster(report=self.log.info)
