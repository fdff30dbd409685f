"""Node control and service control over the sandbox (`topology.node_control: sandbox`,
`application.service_control: sandbox`): the product finds them by name (`continuity.policy.registry`), never by
import."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any
from continuity.postgres.cluster import ClusterError, free_port, stop_pid, wait_for_port
from continuity.failover.nodecontrol import NodeControlError, latest_checkpoint_location, slot_statements
from continuity_lab.processes import listening_sampleapps
from continuity.policy.model import synchronous_standby_names
from continuity.postgres.node import conninfo
from continuity_lab.sandbox import SANDBOX_ENV_VAR, Sandbox

log = logging.getLogger(__name__)


class SandboxServiceControl:
    """ServiceControl over the sandbox's application processes and Redis servers."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._verification: dict[int, subprocess.Popen] = {}

    @classmethod
    def from_policy(cls, policy: object, **_unused: object) -> SandboxServiceControl:
        """What `service_control_for` calls: the sandbox of $CONTINUITY_SANDBOX."""
        return cls.from_environment()

    @classmethod
    def from_environment(cls) -> SandboxServiceControl:
        from continuity.failover.servicecontrol import ServiceControlError

        root = os.environ.get(SANDBOX_ENV_VAR)
        if not root:
            raise ServiceControlError(f"application.service_control is 'sandbox' but {SANDBOX_ENV_VAR} is not set. "
                                      f"HINT: run under `continuity run` or source `continuity sandbox env`.")
        return cls(Sandbox(root=root))

    def start_region(self, region: str) -> list[str]:
        return self.sandbox.start_application(region)

    def stop_region(self, region: str) -> list[str]:
        return self.sandbox.stop_application(region)

    def start_verification_instance(self, region: str, *, dsn: str) -> str:
        port = free_port()
        env = self.sandbox._application_environment(region, f"verify-{region}-{port}")
        env.pop("CONTINUITY_APP_REDIS_URL")
        env.update({"CONTINUITY_APP_DSN": dsn, "CONTINUITY_APP_READ_ONLY": "1"})
        self.sandbox.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.sandbox.logs_dir / "verification-instances.log", "ab") as log_handle:
            process = subprocess.Popen([sys.executable, "-m", "continuity_lab.sampleapp", "serve", "--port", str(port)],
                                       stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
        self._verification[port] = process
        try:
            wait_for_port(port, what=f"the verification instance of {region}", timeout=30)
        except Exception:
            self.stop_verification_instance(f"http://127.0.0.1:{port}")
            raise
        return f"http://127.0.0.1:{port}"

    def stop_verification_instance(self, url: str) -> None:
        port = int(url.rsplit(":", 1)[1])
        process = self._verification.pop(port, None)
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        elif process is None:
            # Started by another process (`continuity sandbox app verify-start` over SSH): found by its port.
            for pid in listening_sampleapps(port):
                stop_pid(pid, name=f"verification instance on port {port}", sig=signal.SIGTERM, timeout=10)

    def running(self, region: str) -> dict[str, bool]:
        return self.sandbox.application_running(region)

    def isolate_region(self, region: str) -> list[str]:
        return self.sandbox.isolate_region(region)

    def reconnect_region(self, region: str) -> list[str]:
        return self.sandbox.reconnect_region(region)

    def promote_cache(self, region: str) -> str:
        self.sandbox.reload()
        client = self.sandbox.redis_client(region)
        if client.info("replication").get("role") == "master":
            return f"Redis in {region} already a primary"
        client.execute_command("REPLICAOF", "NO", "ONE")
        self.sandbox.state["redis"][region]["role"] = "primary"
        self.sandbox._save_state()
        return f"Redis in {region} promoted (REPLICAOF NO ONE)"

    def follow_cache(self, region: str, upstream_region: str) -> str:
        self.sandbox.reload()
        upstream_port = self.sandbox.state["redis"][upstream_region]["port"]
        client = self.sandbox.redis_client(region)
        client.execute_command("REPLICAOF", "127.0.0.1", str(upstream_port))
        self.sandbox.state["redis"][region]["role"] = "replica"
        self.sandbox._save_state()
        return f"Redis in {region} replicates from {upstream_region}'s"


class SandboxNodeControl:
    """NodeControl over the sandbox's local data directories."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    @classmethod
    def from_policy(cls, policy: object, **_unused: object) -> SandboxNodeControl:
        """What `node_control_for` calls: the sandbox of $CONTINUITY_SANDBOX."""
        return cls.from_environment()

    @classmethod
    def from_environment(cls) -> SandboxNodeControl:
        root = os.environ.get(SANDBOX_ENV_VAR)
        if not root:
            raise NodeControlError(
                f"no node control is configured: ${SANDBOX_ENV_VAR} is not set. Failover needs host-level access "
                f"to the nodes (stop, fence, rewind); in the sandbox `continuity sandbox env` sets it")
        return cls(Sandbox(root=root))

    def _cluster(self, name: str):
        try:
            return self.sandbox.cluster(name)
        except KeyError:
            raise NodeControlError(f"node {name!r} is not part of the sandbox at {self.sandbox.root}") from None

    def is_running(self, name: str) -> bool:
        return self._cluster(name).running

    def stop(self, name: str, *, mode: str = "fast") -> None:
        try:
            self._cluster(name).stop(mode=mode, timeout=60)
        except ClusterError as exc:
            raise NodeControlError(f"stopping node {name}: {exc}") from exc

    def start(self, name: str) -> None:
        try:
            self._cluster(name).start(timeout=60)
        except ClusterError as exc:
            raise NodeControlError(f"starting node {name}: {exc}") from exc

    def checkpoint_lsn(self, name: str) -> str:
        cluster = self._cluster(name)
        result = cluster.user.run([cluster.tool("pg_controldata"), "-D", str(cluster.data_dir)],
                                  what=f"pg_controldata of node {name}")
        return latest_checkpoint_location(result.stdout, node=name)

    def fence(self, name: str) -> None:
        cluster = self._cluster(name)
        cluster.user.write_file(cluster.data_dir / "standby.signal", "")

    def unfence(self, name: str) -> None:
        (self._cluster(name).data_dir / "standby.signal").unlink(missing_ok=True)

    def is_fenced(self, name: str) -> bool:
        return (self._cluster(name).data_dir / "standby.signal").exists()

    def make_primary_settings(self, name: str, *, synchronous_standbys: list[str], quorum: int = 1) -> None:
        self.sandbox._write_node_conf(name, synchronous_names=synchronous_standby_names(synchronous_standbys,
                                                                                         quorum=quorum))
        if self.is_running(name):
            self._cluster(name).psql("SELECT pg_reload_conf();")

    def follow(self, name: str, upstream: str) -> None:
        self.sandbox._write_node_conf(name, upstream=upstream)
        self.fence(name)
        if self.is_running(name):
            # primary_conninfo is reloadable (PostgreSQL 13+): the WAL receiver restarts on the new upstream.
            self._cluster(name).psql("SELECT pg_reload_conf();")

    def ensure_slots(self, name: str, slots: list[str]) -> None:
        statements = slot_statements(slots)
        if statements:
            self._cluster(name).psql(statements)

    def rewind(self, name: str, source: str) -> str:
        cluster = self._cluster(name)
        port = self.sandbox.state["nodes"][source]["port"]
        source_info = (f"host=127.0.0.1 port={port} user=continuity_admin dbname=postgres "
                       f"application_name=continuity-rewind-{name}")
        # A crashed former primary is first recovered in single-user mode, which refuses standby mode:
        # lift the fence for the rewind (the server is stopped throughout) and put it back after.
        self.unfence(name)
        try:
            result = cluster.user.run(
                [cluster.tool("pg_rewind"), "--target-pgdata", str(cluster.data_dir), "--source-server", source_info,
                 "--progress"],
                what=f"pg_rewind of node {name} from {source}",
                env={"PGPASSWORD": self.sandbox.password("continuity_admin")}, timeout=900)
        except ClusterError as exc:
            raise NodeControlError(str(exc)) from exc
        finally:
            self.fence(name)
        lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
        return lines[-1] if lines else "pg_rewind finished"


def failover_cluster(sandbox: Sandbox, *, report: Any = log.info) -> Any:
    """The cluster dr_failover's steps act on, wired to this sandbox without Airflow (bench, CLI)."""
    from continuity.failover.guard import deposer_for
    from continuity.failover.steps import ReplicationGroup
    from continuity.failover.router import Endpoint, PgBouncerRouter

    entry = sandbox.policy.topology.entry_point
    admin = sandbox.connections()[entry.admin_conn_id or "continuity_pgbouncer_admin"]
    router = PgBouncerRouter(
        admin_conninfo=conninfo(host="127.0.0.1", port=sandbox.pgbouncer_port, user=admin["login"],
                                password=admin["password"], dbname="pgbouncer"),
        ini_path=sandbox.pgbouncer_ini, database=entry.database or sandbox.policy.topology.databases[0])
    return ReplicationGroup(policy=sandbox.policy.with_primary(sandbox.current_primary()),
                   nodes={name: sandbox.node(name) for name in sandbox.node_names},
                   endpoints={name: Endpoint(node=name, host="127.0.0.1", port=sandbox.state["nodes"][name]["port"])
                              for name in sandbox.node_names},
                   control=SandboxNodeControl(sandbox), router=router, app_conninfo=sandbox.app_conninfo(), report=report,
                   deposer=deposer_for(sandbox.policy, lambda: sandbox.storage_locations().values()))
