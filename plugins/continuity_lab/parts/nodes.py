"""PostgreSQL nodes (primary, synchronous and DR standbys) and PgBouncer in front of the primary (one part of `continuity_lab.sandbox.Sandbox`)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo

from continuity.postgres.cluster import LocalCluster, pid_alive, port_is_free, wait_for_port
from continuity.postgres.node import PostgresNode, conninfo
from continuity.waiting import poll
from continuity_lab.processes import (APP_DATABASE, ROLES, SandboxError, fetch_script_source, pgbouncer_ini, read_pid,
                                      sql_literal)

log = logging.getLogger(__name__)


class NodesPart:
    """PostgreSQL nodes (primary, synchronous and DR standbys) and PgBouncer in front of the primary."""

    def cluster(self, name: str) -> LocalCluster:
        node = self.state["nodes"][name]
        return LocalCluster(
            name=name,
            data_dir=Path(node["data_dir"]),
            port=node["port"],
            socket_dir=self.socket_dir,
            log_file=self.logs_dir / f"{name}.log",
            user=self.user,
            bindir=Path(self.state["bindir"]),
        )

    def node(self, name: str, *, user: str = "continuity_admin", dbname: str = "postgres") -> PostgresNode:
        port = self.state["nodes"][name]["port"]
        return PostgresNode(
            name=name,
            conninfo=conninfo(host="127.0.0.1", port=port, user=user, password=self.password(user), dbname=dbname),
        )

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.policy.topology.nodes]

    @property
    def pgbouncer_port(self) -> int:
        return self.state["pgbouncer"]["port"]

    @property
    def pgbouncer_ini(self) -> Path:
        return self.pgbouncer_dir / "pgbouncer.ini"

    def app_conninfo(self, *, through_pgbouncer: bool = True) -> str:
        port = self.pgbouncer_port if through_pgbouncer else self.state["nodes"][self.current_primary()]["port"]
        return conninfo(host="127.0.0.1", port=port, user="app", password=self.password("app"), dbname=APP_DATABASE)

    def current_primary(self) -> str:
        """The node whose data directory has no standby.signal (the one serving writes)."""
        for name in self.node_names:
            data_dir = Path(self.state["nodes"][name]["data_dir"])
            if not (data_dir / "standby.signal").exists():
                return name
        raise SandboxError(f"no node of the sandbox at {self.root} is configured as primary")

    def _write_node_conf(self, name: str, *, synchronous_names: str = "", upstream: str | None = None) -> None:
        cluster = self.cluster(name)
        settings: dict[str, str | int] = {
            "port": cluster.port,
            "unix_socket_directories": str(self.socket_dir),
            "cluster_name": name,
        }
        if upstream is None:
            settings["synchronous_standby_names"] = synchronous_names
        else:
            settings["primary_conninfo"] = make_conninfo(
                host="127.0.0.1", port=self.state["nodes"][upstream]["port"], user="replicator",
                password=self.password("replicator"), application_name=name,
            )
            settings["primary_slot_name"] = name
            # Behind its slot or cut from its upstream, a standby replays from the archive, through the WAL
            # service (the pusher's socket): exit 1 while the service is not running, and it streams.
            settings["restore_command"] = f"{self._fetch_script()} {self.wal_fetch_socket} %f %p"
        cluster.write_node_conf(settings)

    @property
    def wal_fetch_socket(self) -> Path:
        return self.socket_dir / "continuity-wal.sock"

    def _fetch_script(self) -> Path:
        script = self.root / "bin" / "fetch-wal.sh"
        if not script.exists():  # a sandbox made before standbys fetched from the archive
            shutil.copyfile(fetch_script_source(), script)
            script.chmod(0o755)
        return script

    def _create_roles(self, primary: LocalCluster) -> None:
        pw = {role: sql_literal(self.password(role)) for role in ("postgres", *ROLES)}
        primary.psql(
            f"""
            ALTER ROLE postgres PASSWORD {pw['postgres']};
            CREATE ROLE replicator LOGIN REPLICATION PASSWORD {pw['replicator']};
            CREATE ROLE continuity_backup LOGIN REPLICATION BYPASSRLS PASSWORD {pw['continuity_backup']};
            GRANT pg_read_all_data, pg_monitor TO continuity_backup;
            GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO continuity_backup;
            GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO continuity_backup;
            GRANT EXECUTE ON FUNCTION pg_switch_wal() TO continuity_backup;
            CREATE ROLE continuity_admin LOGIN PASSWORD {pw['continuity_admin']};
            GRANT pg_monitor, pg_checkpoint, pg_signal_backend TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_switch_wal() TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_reload_conf() TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO continuity_admin;
            GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO continuity_admin;
            CREATE ROLE app LOGIN PASSWORD {pw['app']};
            CREATE DATABASE {APP_DATABASE} OWNER app;
            """
        )


    def _restart_nodes(self, started: list[str]) -> None:
        for name in self.node_names:
            cluster = self.cluster(name)
            if not cluster.running and not port_is_free(cluster.port):
                raise SandboxError(
                    f"port {cluster.port} of node {name} is taken by another process. "
                    f"HINT: stop it, or `continuity sandbox down --purge` and `up` for fresh ports."
                )
        primary = self.current_primary()
        for name in [primary, *[n for n in self.node_names if n != primary]]:
            self.cluster(name).start()
            started.append(f"postgres {name}")

    def wait_streaming(self, *, timeout: float = 60) -> None:
        """Wait until every standby of the topology streams from the current primary."""
        primary = self.node(self.current_primary())
        expected = {n for n in self.node_names if n != primary.name}
        seen: dict[str, str] = {}

        def all_streaming() -> bool:
            seen.clear()
            seen.update({r.application_name: r.state for r in primary.replication()})
            return all(seen.get(name) == "streaming" for name in expected)

        if poll(all_streaming, timeout=timeout):
            return
        raise SandboxError(f"standbys not streaming from {primary.name} after {timeout:.0f}s: expected {sorted(expected)}, saw {seen}")

    def wait_entry_point(self, *, timeout: float = 30) -> None:
        """Wait until the application can write through PgBouncer again (after a restart)."""
        last = [""]

        def serves_writes() -> bool:
            try:
                with psycopg.connect(self.app_conninfo(), connect_timeout=2) as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return True
                    last[0] = "it leads to a node in recovery"
            except psycopg.Error as exc:
                last[0] = str(exc).strip().splitlines()[0]
            return False

        if poll(serves_writes, timeout=timeout):
            return
        raise SandboxError(f"PgBouncer on port {self.pgbouncer_port} did not serve writes within {timeout:.0f}s: {last[0]}")

    # -- PgBouncer ---------------------------------------------------------------------------
    def _start_pgbouncer(self, started: list[str]) -> None:
        pid_file = self.pgbouncer_dir / "pgbouncer.pid"
        if pid_alive(read_pid(pid_file)):
            return
        port = self.pgbouncer_port
        if not port_is_free(port):
            raise SandboxError(f"PgBouncer's port {port} is taken by another process")
        primary_port = self.state["nodes"][self.current_primary()]["port"]
        ini = self.pgbouncer_ini
        if not ini.exists():
            self.user.write_file(ini, pgbouncer_ini(
                port=port, primary_port=primary_port, directory=self.pgbouncer_dir,
                log_file=self.logs_dir / "pgbouncer.log",
            ))
        users = "".join(f'"{role}" "{self.password(role)}"\n' for role in ("app", "continuity_admin"))
        self.user.write_file(self.pgbouncer_dir / "userlist.txt", users)
        self.user.run([self.state["pgbouncer_bin"], "-d", str(ini)], what="start of PgBouncer",
                      cwd=self.pgbouncer_dir)
        wait_for_port(port, what="PgBouncer")
        self.state["pgbouncer"]["pid_file"] = str(pid_file)
        started.append("pgbouncer")

    def backup_node(self, name: str) -> Any:
        """Where and as whom backups connect to node `name` (the continuity_backup role)."""
        from continuity.backup.full import NodeAddress

        return NodeAddress(name=name, host="127.0.0.1", port=self.state["nodes"][name]["port"],
                           user="continuity_backup", password=self.password("continuity_backup"))
