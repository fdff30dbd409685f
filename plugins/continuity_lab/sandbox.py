"""The local DR sandbox: real PostgreSQL with streaming replication, PgBouncer and an S3 endpoint.

`Sandbox(root=...).up()` builds (first time) or restarts (later) everything the policy's topology
names: a primary, a synchronous standby and an asynchronous "DR region" standby on loopback ports,
PgBouncer in front of the primary, moto's S3 server with one versioned bucket per storage
location, a sample application database and an encryption key. `down()` stops exactly the
processes `up()` recorded. Secrets live only in files of mode 0600 under the sandbox root.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo

from continuity_lab import sampledata
from continuity.postgres.cluster import (
    ClusterError,
    LocalCluster,
    ServiceUser,
    conf_value,
    find_bindir,
    find_pgbouncer,
    free_port,
    pid_alive,
    port_is_free,
    scrubbed_environment,
    stop_pid,
    wait_for_port,
    write_private,
)
from continuity.storage.keys import Keyring
from continuity.policy.model import NodeHost, Policy, load_policy
from continuity.policy.project import (INCLUDE_ENV_VAR, POLICY_ENV_VAR, PROJECT_ENV_VAR, SANDBOX_ENV_VAR, include_dir,
                                policy_path, project_dir)
from continuity.postgres.node import NodeUnreachable, PostgresNode, as_dict, conninfo
from continuity.waiting import poll
from continuity_lab.processes import (APP_DATABASE, APP_HOST_USER, SSH_CONN_ID, WAL_PUSHER_NEEDLE, ChunkReader,
                                      SandboxError,
                                      app_ssh_conn_id, find_redis_server, find_sshd, is_our_process, pgbouncer_ini,
                                      read_pid, sql_literal, start_redis_server)

log = logging.getLogger(__name__)


ROLES = ("replicator", "continuity_backup", "continuity_admin", "app")
S3_ACCESS_KEY = "continuity-sandbox"

# Settings every node shares (copied into standbys by the base backup); node.conf holds the rest.
SHARED_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",
    "archive_mode": "on",
    "max_connections": 60,
    "shared_buffers": "64MB",
    "password_encryption": "scram-sha-256",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_replication_commands": "on",
}

PG_HBA = """\
# Continuity sandbox. The local socket lives in a directory only the service user can enter.
local   all          all                      trust
host    replication  replicator         127.0.0.1/32  scram-sha-256
host    replication  continuity_backup  127.0.0.1/32  scram-sha-256
host    all          all                127.0.0.1/32  scram-sha-256
"""


def archive_script_source() -> Path:
    """The archive_command script the sandbox installs (include/scripts/archive-wal.sh)."""
    return include_dir() / "scripts" / "archive-wal.sh"


def fetch_script_source() -> Path:
    """The standbys' restore_command script (include/scripts/fetch-wal.sh)."""
    return include_dir() / "scripts" / "fetch-wal.sh"


class Sandbox:
    def __init__(self, *, root: Path | str | None = None, policy: Policy | None = None) -> None:
        self.root = Path(root or os.environ.get(SANDBOX_ENV_VAR) or project_dir() / ".sandbox").absolute()
        self.policy = policy or load_policy()
        self.state_file = self.root / "state.json"
        self.connections_file = self.root / "connections.env"
        self.key_file = self.root / "keys" / "keyring.json"
        self.logs_dir = self.root / "logs"
        self.spool_dir = self.root / "wal-spool"
        self.socket_dir = self.root / "run"
        self.pgbouncer_dir = self.root / "pgbouncer"
        self.airflow_home = self.root / "airflow"
        self._state: dict[str, Any] | None = None
        self._user: ServiceUser | None = None

    # -- state -------------------------------------------------------------------------------
    @property
    def user(self) -> ServiceUser:
        if self._user is None:
            self._user = ServiceUser.detect()
        return self._user

    @property
    def state(self) -> dict[str, Any]:
        if self._state is None:
            if not self.state_file.exists():
                raise SandboxError(f"no sandbox at {self.root} (no state.json). HINT: run `continuity sandbox up` first.")
            self._state = json.loads(self.state_file.read_text())
        return self._state

    def reload(self) -> None:
        """Forget the cached state: another process (a DAG's service control) may have changed the file."""
        if self.state_file.exists():
            self._state = None

    def _save_state(self) -> None:
        assert self._state is not None
        write_private(self.state_file, json.dumps(self._state, indent=2, sort_keys=True) + "\n")

    @property
    def exists(self) -> bool:
        return self.state_file.exists()

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

    def password(self, role: str) -> str:
        return self.state["secrets"][role]

    @property
    def node_names(self) -> list[str]:
        return [n.name for n in self.policy.topology.nodes]

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.state['s3']['port']}"

    def region_s3_endpoint(self, region: str) -> str:
        """How `region`'s clients reach S3: through the region's gateway when it has one (the primary
        region, which an exercise can cut off), else the endpoint itself."""
        gateway = self.state.get("gateways", {}).get(region)
        return f"http://127.0.0.1:{gateway['port']}" if gateway else self.s3_endpoint

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

    # -- up ----------------------------------------------------------------------------------
    def up(self, *, scale: float = 1.0, wal_pusher: bool = True, ssh: bool = False) -> dict[str, Any]:
        """Build the sandbox the first time, restart it later. Returns the state (with secrets). Without
        `wal_pusher`, WAL waits in the spool for a shipper (dr_wal_archive, or `start_wal_pusher`). With
        `ssh` (or once it had it), an SSH server on loopback lets node control reach the nodes as a
        production one does (`write_ssh_policy`)."""
        self._check_prerequisites()
        started: list[str] = []
        try:
            if self.exists and all(self.cluster(n).exists for n in self.node_names):
                log.info("restarting the existing sandbox at %s", self.root)
                self._restart_nodes(started)
            else:
                self._build(scale=scale, started=started)
            self._start_pgbouncer(started)
            self._start_s3(started)
            self._start_gateways(started)
            self._start_redis(started)
            self._ensure_probe_user()
            self._start_application(started)
            self._start_receivers(started)
            if ssh or "ssh" in self.state:
                self.start_ssh(started)
            if wal_pusher:
                self.start_wal_pusher(started)
            self.write_connections()
            self._save_state()
        except BaseException:
            log.error("sandbox up failed; stopping what it started (%s)", ", ".join(started) or "nothing")
            self.down()
            raise
        return self.state

    def _check_prerequisites(self) -> None:
        find_bindir()
        find_pgbouncer()
        find_redis_server()
        if shutil.which("runuser") is None and os.geteuid() == 0:
            raise SandboxError("running as root needs `runuser` (util-linux) to start PostgreSQL as the postgres user")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        if self.user.is_other:
            probe = subprocess.run(self.user.command(["test", "-x", str(self.root)]), check=False)
            if probe.returncode != 0:
                raise SandboxError(
                    f"the OS user {self.user.name!r} cannot enter {self.root}; PostgreSQL runs as that user. "
                    f"HINT: put the sandbox under a directory every user can traverse (chmod o+x on its parents) "
                    f"or set {SANDBOX_ENV_VAR}."
                )

    def _new_state(self) -> dict[str, Any]:
        topology = self.policy.topology
        nodes = {}
        for node in topology.nodes:
            nodes[node.name] = {
                "port": free_port(),
                "data_dir": str(self.root / "pg" / node.name),
                "region": node.region,
                "synchronous": node.synchronous,
                "initial_role": node.role,
            }
        return {
            "version": 1,
            "root": str(self.root),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "bindir": str(find_bindir()),
            "pgbouncer_bin": str(find_pgbouncer()),
            "service_user": self.user.name,
            "nodes": nodes,
            "pgbouncer": {"port": free_port()},
            "s3": {"port": free_port(), "pid": None},
            "secrets": {role: secrets.token_urlsafe(24) for role in ("postgres", *ROLES)}
            | {"s3_secret_key": secrets.token_urlsafe(24)},
            "kek_id": "sandbox-" + datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S"),
        }

    def _build(self, *, scale: float, started: list[str]) -> None:
        if (self.root / "pg").exists():
            raise SandboxError(
                f"{self.root / 'pg'} holds an incomplete sandbox (a previous `up` failed). "
                f"HINT: `continuity sandbox down --purge` removes it, then run `up` again."
            )
        self._state = self._new_state()
        self._state["scale"] = scale
        self._ensure_key()
        for directory, mode in ((self.logs_dir, 0o755), (self.spool_dir, 0o750), (self.socket_dir, 0o700),
                                (self.root / "pg", 0o755), (self.pgbouncer_dir, 0o700), (self.root / "bin", 0o755)):
            self.user.make_dir(directory, mode)
        archive_script = self.root / "bin" / "archive-wal.sh"
        shutil.copyfile(archive_script_source(), archive_script)
        archive_script.chmod(0o755)

        primary_name = self.policy.topology.primary.name
        primary = self.cluster(primary_name)
        log.info("initialising primary %s (data checksums on) in %s", primary_name, primary.data_dir)
        primary.initdb()
        settings = dict(SHARED_SETTINGS)
        incremental = self.policy.backups.incremental
        settings["archive_command"] = (f"{shlex.quote(str(archive_script))} {shlex.quote(str(self.spool_dir))} %p %f "
                                       f"{incremental.max_queued}")
        settings["archive_timeout"] = f"{max(1, int(incremental.archive_timeout.total_seconds()))}s"
        conf = "\n".join(f"{k} = {conf_value(v)}" for k, v in settings.items())
        self.user.write_file(primary.data_dir / "continuity.conf", "# Written by continuity sandbox.\n" + conf + "\n")
        with open(primary.data_dir / "postgresql.conf", "a") as handle:
            handle.write("\ninclude_if_exists = 'continuity.conf'\ninclude_if_exists = 'node.conf'\n")
        self.user.write_file(primary.data_dir / "pg_hba.conf", PG_HBA)
        self._write_node_conf(primary_name, synchronous_names="")
        primary.start()
        started.append(f"postgres {primary_name}")
        self._create_roles(primary)

        for standby in self.policy.topology.standbys:
            cluster = self.cluster(standby.name)
            log.info("cloning standby %s (%s) from %s with pg_basebackup", standby.name, standby.region, primary_name)
            cluster.base_backup_from(source_port=primary.port, user="replicator",
                                     password=self.password("replicator"), slot=standby.name)
            self._write_node_conf(standby.name, upstream=primary_name)
            self.user.write_file(cluster.data_dir / "standby.signal", "")
            cluster.start()
            started.append(f"postgres {standby.name}")

        sync_names = ",".join(n.name for n in self.policy.topology.standbys if n.synchronous)
        self._write_node_conf(primary_name, synchronous_names=sync_names)
        primary.psql("SELECT pg_reload_conf();")
        self.wait_streaming(timeout=60)

        with psycopg.connect(self.app_conninfo(through_pgbouncer=False)) as conn:
            counts = sampledata.generate(conn, scale=scale)
        log.info("sample application database %r generated at scale %s: %s", APP_DATABASE, scale, counts)

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
            CREATE ROLE continuity_backup LOGIN REPLICATION PASSWORD {pw['continuity_backup']};
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

    def _ensure_key(self) -> None:
        if self.key_file.exists():
            return
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        self.key_file.parent.chmod(0o700)
        kek_id = self.state["kek_id"]
        Keyring(keys={kek_id: secrets.token_bytes(32)}, active=kek_id).save(self.key_file)
        log.info("generated a new 256-bit key-encryption key %s in %s (mode 0600)", kek_id, self.key_file)

    def keyring(self) -> Keyring:
        return Keyring.from_file(self.key_file)

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

    def _start_gateways(self, started: list[str]) -> None:
        """The primary region's network edge to S3 (continuity_lab.gateway): a region-loss exercise stops it."""
        gateways = self.state.setdefault("gateways", {})
        for region in (self.policy.topology.primary_region,):
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
                     "--upstream", str(self.state["s3"]["port"])],
                    stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    cwd=self.root, env=scrubbed_environment({k: v for k, v in os.environ.items() if k == "PYTHONPATH"}))
            entry["pid"] = process.pid
            started.append(f"s3 gateway {region}")
            self._save_state()
            wait_for_port(entry["port"], what=f"the S3 gateway of {region}")

    def _stop_gateway(self, region: str) -> bool:
        entry = self.state.get("gateways", {}).get(region)
        if entry and is_our_process(entry.get("pid"), "continuity_lab.gateway"):
            stop_pid(entry["pid"], name=f"S3 gateway {region}", sig=signal.SIGTERM)
            entry["pid"] = None
            self._save_state()
            return True
        return False

    # -- losing a region and getting it back (dr_region_recovery) ---------------------------------
    def isolate_region(self, region: str) -> list[str]:
        """Lose `region` as a disaster would: its application instances, its Redis and its PostgreSQL nodes
        killed (immediate shutdown: no clean handover), its S3 gateway down (every request refused).
        PgBouncer, the entry point, stays: it stands for the DNS name clients use, which outlives a region."""
        self.reload()
        lost = [f"application {name}" for name in self.stop_application(region)]
        redis = self.state.get("redis", {}).get(region)
        if redis and is_our_process(redis.get("pid"), "redis-server"):
            stop_pid(redis["pid"], name=f"Redis {region}", sig=signal.SIGKILL)
            redis["pid"] = None
            lost.append(f"redis {region}")
        if self._stop_gateway(region):
            lost.append(f"s3 gateway {region}")
        for node in self.policy.topology.nodes:
            if node.region == region and self.cluster(node.name).running:
                self.cluster(node.name).stop(mode="immediate")
                lost.append(f"postgres {node.name}")
        self._save_state()
        log.info("region %s lost: %s", region, ", ".join(lost) or "nothing was running")
        return lost

    def reconnect_region(self, region: str) -> list[str]:
        """The region is back: its S3 gateway and its Redis (a replica of the serving region's, whatever it
        held before). Its PostgreSQL nodes stay down until they are rebuilt as standbys; its application
        stays stopped until the primary moves back."""
        self.reload()
        redis = self.state.get("redis", {})
        if region in redis and any(e["role"] == "primary" for r, e in redis.items() if r != region):
            redis[region]["role"] = "replica"  # never two primaries: it resynchronises from the serving one
        started: list[str] = []
        self._start_gateways(started)
        self._start_redis(started)
        self._save_state()
        return started

    # -- Redis per region: the application's sessions, cache and processing queue -----------------
    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    def _start_redis(self, started: list[str]) -> None:
        """A Redis in the primary region and one in the DR region replicating from it (Debian's redis-server)."""
        redis = self.state.setdefault("redis", {})
        password = self.state["secrets"].setdefault("redis", secrets.token_urlsafe(24))
        topology = self.policy.topology
        for region, role in ((topology.primary_region, "primary"), (topology.dr_region, "replica")):
            entry = redis.setdefault(region, {"port": free_port(), "pid": None, "role": role})
            if is_our_process(entry.get("pid"), "redis-server"):
                continue
            if not port_is_free(entry["port"]):
                entry["port"] = free_port()
            extra = [f"masterauth {password}"]
            if entry["role"] == "replica":
                # Whichever region's Redis is the primary now (a failover swaps them).
                upstream = next((e for r, e in redis.items() if e["role"] == "primary"), redis[topology.primary_region])
                extra.append(f"replicaof 127.0.0.1 {upstream['port']}")
            entry["pid"] = start_redis_server(directory=self.redis_dir / region, port=entry["port"], password=password,
                                              log_file=self.logs_dir / f"redis-{region}.log", extra=extra)
            started.append(f"redis {region}")
            self._save_state()
            wait_for_port(entry["port"], what=f"Redis in {region}")

    # -- SSH: the nodes' hosts as a production node control sees them -------------------------
    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    def start_ssh(self, started: list[str] | None = None) -> int:
        """An OpenSSH server on loopback through which node control reaches the nodes as their OS user:
        its own host key, one client key authorized for that user only, and a password file the user
        owns for replication and pg_rewind. Returns its port."""
        sshd = find_sshd()
        entry = self.state.setdefault("ssh", {"port": free_port(), "pid": None})
        if is_our_process(entry.get("pid"), str(self.ssh_dir / "sshd_config")):
            return entry["port"]
        if not port_is_free(entry["port"]):
            entry["port"] = free_port()
        # Every path sshd reads as the node's OS user (the authorized keys) must be traversable by it.
        self.ssh_dir.mkdir(mode=0o755, exist_ok=True)
        self.ssh_dir.chmod(0o755)
        for key in ("host_ed25519", "client_ed25519"):
            if not (self.ssh_dir / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"continuity-sandbox-{key}",
                                "-f", str(self.ssh_dir / key)], check=True, capture_output=True)
        authorized = self.ssh_dir / "authorized_keys"
        authorized.write_text((self.ssh_dir / "client_ed25519.pub").read_text())
        authorized.chmod(0o644)
        pgpass = "".join(f"127.0.0.1:*:*:{role}:{self.password(role)}\n" for role in ("replicator", "continuity_admin"))
        self.user.write_file(self.ssh_dir / "pgpass", pgpass)
        config = self.ssh_dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {entry['port']}", "ListenAddress 127.0.0.1", f"HostKey {self.ssh_dir / 'host_ed25519'}",
            f"PidFile {self.ssh_dir / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            # The nodes' OS user for node control; the sandbox's own user is the regions' "application host"
            # for service control over SSH (it owns the application's processes and this state).
            f"AllowUsers {self.user.name} {APP_HOST_USER}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            # PAM's account stage instead of sshd's own check: Debian's postgres account has a locked
            # password ("!"), which sshd alone refuses even for a key.
            "UsePAM yes", "StrictModes no",
            f"PermitRootLogin {'prohibit-password' if APP_HOST_USER == 'root' else 'no'}",
            "X11Forwarding no", "AllowTcpForwarding no",
            "LogLevel INFO", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / "sshd.log").open("ab") as log_file:
            process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=log_file,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        entry["pid"] = process.pid
        if started is not None:
            started.append("sshd")
        self._save_state()
        wait_for_port(entry["port"], what="the sandbox's SSH server")
        self.write_connections()
        return entry["port"]

    def stop_ssh(self) -> bool:
        pid = self.state.get("ssh", {}).get("pid")
        if is_our_process(pid, str(self.ssh_dir / "sshd_config")):
            stop_pid(pid, name="sshd", sig=signal.SIGTERM)
            return True
        return False

    def ssh_policy(self) -> Policy:
        """This sandbox's policy with node control over SSH: every node's host as its data directory,
        binaries, port and socket say (the SSH server must be running)."""
        topology = self.policy.topology
        nodes = []
        for node in topology.nodes:
            cluster = self.cluster(node.name)
            host = NodeHost(
                ssh_conn_id=SSH_CONN_ID.format(node=node.name), data_directory=str(cluster.data_dir),
                bin_directory=str(Path(cluster.tool("pg_ctl")).parent), address="127.0.0.1", port=cluster.port,
                socket_directory=str(self.socket_dir), settings_file="node.conf", passfile=str(self.ssh_dir / "pgpass"),
                log_file=str(cluster.log_file),
                restore_command=f"{self._fetch_script()} {self.wal_fetch_socket} %f %p")
            nodes.append(node.model_copy(update={"host": host}))
        return self.policy.model_copy(update={"topology": topology.model_copy(
            update={"nodes": nodes, "node_control": "ssh"})})

    def write_ssh_policy(self) -> Path:
        """`ssh_policy()` as a policy file (`$CONTINUITY_POLICY` for Airflow to fail over over SSH), with the
        application's service control over SSH too (`ssh_service_commands`)."""
        path = self.root / "policy-ssh.yaml"
        data = yaml.safe_load(policy_path().read_text())
        topology = self.ssh_policy().topology
        data["topology"]["node_control"] = "ssh"
        hosts = {node.name: node.host.model_dump(exclude_none=True) for node in topology.nodes}
        for node in data["topology"]["nodes"]:
            node["host"] = hosts[node["name"]]
        if data.get("application"):
            data["application"]["service_control"] = "ssh"
            data["application"]["ssh"] = {region: self.ssh_service_commands(region)
                                          for region in data["application"]["regions"]}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def ssh_service_commands(self, region: str) -> dict[str, str]:
        """What a region's application host runs for each service-control action: here `continuity sandbox app`
        on this machine, logged in over the sandbox's SSH server as the user who owns the sandbox."""
        app = (f"{PROJECT_ENV_VAR}={shlex.quote(str(project_dir()))} {shlex.quote(sys.executable)} -m continuity.cli "
               f"sandbox app --root {shlex.quote(str(self.root))}")
        return {"ssh_conn_id": app_ssh_conn_id(region),
                "start": f"{app} start {region}", "stop": f"{app} stop {region}", "status": f"{app} status {region}",
                "promote_cache": f"{app} promote-cache {region}",
                "follow_cache": f"{app} follow-cache {region} --upstream-port {{upstream_port}}",
                "verify_start": f"{app} verify-start {region}", "verify_stop": f"{app} verify-stop {region} --url {{url}}"}

    def redis_client(self, region: str) -> Any:
        import redis as redis_py

        entry = self.state["redis"][region]
        return redis_py.Redis(host="127.0.0.1", port=entry["port"], password=self.password("redis"), socket_timeout=5)

    # -- the sample application: web instances and processing workers per region ------------------
    PROBE_EMAIL = "dr-probe@continuity.invalid"

    def _ensure_probe_user(self) -> None:
        """The user the synthetic transactions log in as (its password a sandbox secret)."""
        from continuity_lab.sampleapp import ensure_user

        password = self.state["secrets"].setdefault("app_probe", secrets.token_urlsafe(24))
        self._save_state()
        with psycopg.connect(self.app_conninfo(), prepare_threshold=None) as conn:
            ensure_user(conn, email=self.PROBE_EMAIL, password=password)

    def application_region(self, region: str) -> dict[str, Any]:
        """The recorded state of `region`'s application tier (created from the policy the first time)."""
        application = self.policy.application
        if application is None or region not in application.regions:
            raise SandboxError(f"the policy has no application region {region!r}")
        regions = self.state.setdefault("application", {})
        if region not in regions:
            spec = application.regions[region]
            regions[region] = {
                "state": spec.state,
                "web": [{"name": f"web-{region}-{i + 1}", "port": free_port(), "pid": None}
                        for i in range(spec.web_instances)],
                "workers": [{"name": f"worker-{region}-{i + 1}", "pid": None} for i in range(spec.workers)],
            }
        return regions[region]

    def _application_environment(self, region: str, instance: str) -> dict[str, str]:
        spec = self.policy.application.regions[region]
        redis_port = self.state["redis"][region]["port"]
        return scrubbed_environment({
            "CONTINUITY_APP_DSN": self.app_conninfo(),
            "CONTINUITY_APP_REDIS_URL": f"redis://:{self.password('redis')}@127.0.0.1:{redis_port}/0",
            "CONTINUITY_APP_S3_ENDPOINT": self.region_s3_endpoint(region),
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.password("s3_secret_key"),
            "CONTINUITY_APP_REGION": region, "CONTINUITY_APP_VIDEO_BUCKET": spec.video_bucket,
            "CONTINUITY_APP_INSTANCE": instance,
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        })

    def _start_application(self, started: list[str]) -> None:
        if self.policy.application is None:
            return
        for region in self.policy.application.regions:
            if self.application_region(region)["state"] == "serving":
                started += self.start_application(region)

    def start_application(self, region: str) -> list[str]:
        """Start `region`'s web instances and workers (those not running); returns what was started."""
        self.reload()
        entry = self.application_region(region)
        launched: list[str] = []
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for web in entry["web"]:
            if is_our_process(web.get("pid"), "continuity_lab.sampleapp"):
                continue
            if not port_is_free(web["port"]):
                web["port"] = free_port()
            web["pid"] = self._spawn_application(region, web["name"], ["serve", "--port", str(web["port"])])
            launched.append(web["name"])
        for worker in entry["workers"]:
            if not is_our_process(worker.get("pid"), "continuity_lab.sampleapp"):
                worker["pid"] = self._spawn_application(region, worker["name"], ["worker"])
                launched.append(worker["name"])
        entry["state"] = "serving"
        self._save_state()
        for web in entry["web"]:
            wait_for_port(web["port"], what=f"application instance {web['name']}")
        if launched:
            log.info("application in %s started: %s", region, ", ".join(launched))
            self.write_connections()
        return [f"application {name}" for name in launched]

    def _spawn_application(self, region: str, name: str, args: list[str]) -> int:
        with open(self.logs_dir / f"{name}.log", "ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "continuity_lab.sampleapp", *args], stdout=log_handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
                env=self._application_environment(region, name))  # secrets by environment, never argv
        return process.pid

    def stop_application(self, region: str, *, state: str = "standby") -> list[str]:
        """Stop `region`'s web instances and workers; the region is then recorded as `state`."""
        self.reload()
        if region not in self.state.get("application", {}):
            return []
        entry = self.state["application"][region]
        stopped = []
        for item in [*entry["web"], *entry["workers"]]:
            if is_our_process(item.get("pid"), "continuity_lab.sampleapp"):
                stop_pid(item["pid"], name=item["name"], sig=signal.SIGTERM)
                stopped.append(item["name"])
            item["pid"] = None
        entry["state"] = state
        self._save_state()
        return stopped

    def application_running(self, region: str) -> dict[str, bool]:
        self.reload()
        entry = self.state.get("application", {}).get(region)
        if entry is None:
            return {}
        return {item["name"]: is_our_process(item.get("pid"), "continuity_lab.sampleapp")
                for item in [*entry["web"], *entry["workers"]]}

    def application_urls(self, region: str) -> list[str]:
        return [f"http://127.0.0.1:{web['port']}" for web in self.application_region(region)["web"]]

    def probe_target(self, region: str) -> Any:
        from continuity.health.probes import ProbeTarget

        urls = self.application_urls(region)
        return ProbeTarget(region=region, url=urls[0], instance_urls=urls)

    # -- SMTP and webhook receivers (Slack, PagerDuty, status page stand-ins) ---------------------
    @property
    def receivers_dir(self) -> Path:
        return self.root / "receivers"

    def _start_receivers(self, started: list[str]) -> None:
        receivers = self.state.setdefault("receivers", {"smtp_port": free_port(), "http_port": free_port(), "pid": None})
        receivers.setdefault("https_port", free_port())
        for service in ("smtp", "slack", "pagerduty"):  # the credentials the stand-ins' connections carry
            self.state["secrets"].setdefault(service, secrets.token_urlsafe(24))
        if is_our_process(receivers.get("pid"), "continuity_lab.receivers"):
            return
        for key in ("smtp_port", "http_port", "https_port"):
            if not port_is_free(receivers[key]):
                receivers[key] = free_port()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "receivers.log", "ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "continuity_lab.receivers", "--root", str(self.receivers_dir),
                 "--smtp-port", str(receivers["smtp_port"]), "--http-port", str(receivers["http_port"]),
                 "--https-port", str(receivers["https_port"]), "--tls-dir", str(self.receivers_dir / "tls"),
                 "--smtp-login", "continuity"],
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.root,  # the password goes by environment, never on the command line
                env=scrubbed_environment({"CONTINUITY_SMTP_PASSWORD": self.password("smtp"),
                                          **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}))
        receivers["pid"] = process.pid
        started.append("receivers")
        self._save_state()
        wait_for_port(receivers["smtp_port"], what="the SMTP receiver")
        wait_for_port(receivers["http_port"], what="the webhook receiver")
        wait_for_port(receivers["https_port"], what="the webhook receiver's HTTPS port")

    def start_wal_pusher(self, started: list[str] | None = None) -> bool:
        """`continuity wal pusher` on the spool: every segment archive_command queues reaches every storage
        location within seconds. False when it already runs."""
        entry = self.state.setdefault("wal_pusher", {"pid": None})
        if is_our_process(entry.get("pid"), WAL_PUSHER_NEEDLE):
            return False
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "wal-pusher.log", "ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "continuity.cli", "wal", "pusher", "--root", str(self.root),
                 "--spool", str(self.spool_dir), "--socket", str(self.wal_fetch_socket),
                 "--socket-owner", self.user.name],
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.root, env=scrubbed_environment({
                    POLICY_ENV_VAR: str(policy_path().absolute()),
                    **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", PROJECT_ENV_VAR, INCLUDE_ENV_VAR)}}))
        entry["pid"] = process.pid
        if started is not None:
            started.append("wal pusher")
        self._save_state()
        return True

    def stop_wal_pusher(self) -> bool:
        entry = self.state.get("wal_pusher", {})
        if is_our_process(entry.get("pid"), WAL_PUSHER_NEEDLE):
            stop_pid(entry["pid"], name="WAL pusher", sig=signal.SIGTERM)
            entry["pid"] = None
            self._save_state()
            return True
        return False

    @property
    def wal_pusher_running(self) -> bool:
        return is_our_process(self.state.get("wal_pusher", {}).get("pid"), WAL_PUSHER_NEEDLE)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.state['receivers']['http_port']}"

    def s3_client(self, region: str = "us-east-1") -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.s3_endpoint, region_name=region,
            aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=self.password("s3_secret_key"),
        )

    def storage_locations(self) -> dict[str, Any]:
        """The policy's storage locations, reached through this sandbox's S3 endpoint."""
        from continuity.storage.locations import locations_from_policy

        return locations_from_policy(self.policy, lambda loc: self.s3_client(loc.region), base_dir=self.root)

    def catalog(self) -> Any:
        from continuity.storage.catalog import Catalog

        return Catalog(self.storage_locations(), self.keyring())

    def backup_node(self, name: str) -> Any:
        """Where and as whom backups connect to node `name` (the continuity_backup role)."""
        from continuity.backup.full import NodeAddress

        return NodeAddress(name=name, host="127.0.0.1", port=self.state["nodes"][name]["port"],
                           user="continuity_backup", password=self.password("continuity_backup"))

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
        from continuity.objects.replication import load_checkpoint, replicator_for

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
            client = self.s3_client(location.region)
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
            client = self.s3_client(bucket.region)
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
            client = self.s3_client(source.region)
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

    # -- Airflow connections -----------------------------------------------------------------
    def connections(self) -> dict[str, dict[str, Any]]:
        """Airflow connections (JSON form) for the policy's conn ids, pointing at this sandbox."""
        topology = self.policy.topology
        conns: dict[str, dict[str, Any]] = {}
        for node in topology.nodes:
            conns[node.conn_id] = {
                "conn_type": "postgres", "host": "127.0.0.1", "port": self.state["nodes"][node.name]["port"],
                "login": "continuity_admin", "password": self.password("continuity_admin"), "schema": "postgres",
            }
            if node.backup_conn_id:
                conns[node.backup_conn_id] = {
                    "conn_type": "postgres", "host": "127.0.0.1", "port": self.state["nodes"][node.name]["port"],
                    "login": "continuity_backup", "password": self.password("continuity_backup"),
                    "schema": "postgres",
                }
        conns[topology.entry_point.conn_id] = {
            "conn_type": "postgres", "host": "127.0.0.1", "port": self.pgbouncer_port,
            "login": "app", "password": self.password("app"), "schema": APP_DATABASE,
        }
        if topology.entry_point.admin_conn_id:
            conns[topology.entry_point.admin_conn_id] = {
                "conn_type": "postgres", "host": "127.0.0.1", "port": self.pgbouncer_port,
                "login": "continuity_admin", "password": self.password("continuity_admin"), "schema": "pgbouncer",
            }
        if topology.entry_point.config_conn_id:
            conns[topology.entry_point.config_conn_id] = {
                "conn_type": "generic", "extra": {"ini_path": str(self.pgbouncer_ini)},
            }
        for location in self.policy.storage.locations:
            if location.kind == "s3" and location.conn_id:
                conns[location.conn_id] = {
                    "conn_type": "aws", "login": S3_ACCESS_KEY, "password": self.password("s3_secret_key"),
                    "extra": {"endpoint_url": self.region_s3_endpoint(location.region), "region_name": location.region},
                }
        for region, entry in self.state.get("redis", {}).items():
            conns[f"continuity_redis_{region.replace('-', '_')}"] = {
                "conn_type": "redis", "host": "127.0.0.1", "port": entry["port"], "password": self.password("redis"),
                "extra": {"db": 0, "role": entry["role"], "region": region},
            }
        application = self.policy.application
        if application is not None and "secrets" in self.state:
            for region, spec in application.regions.items():
                urls = self.application_urls(region)
                conns[spec.conn_id] = {"conn_type": "http", "host": "127.0.0.1", "schema": "http",
                                       "port": int(urls[0].rsplit(":", 1)[1]), "extra": {"instances": urls}}
            if "app_probe" in self.state["secrets"]:
                conns[application.probe_conn_id] = {"conn_type": "generic", "login": self.PROBE_EMAIL,
                                                    "password": self.password("app_probe")}
        if "receivers" in self.state:
            # The providers' own connection types, pointing at the local receivers.
            conns["continuity_smtp"] = {
                "conn_type": "smtp", "host": "127.0.0.1", "port": self.state["receivers"]["smtp_port"],
                "login": "continuity", "password": self.password("smtp"),
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "continuity@example.com"},
            }
            conns["continuity_slack"] = {
                "conn_type": "slackwebhook", "host": f"{self.webhook_url}/slack/services",
                "password": f"T0SANDBOX/B0SANDBOX/{self.password('slack')[:24]}",
            }
            # PagerDuty's client speaks HTTPS only: the receiver's TLS port, trusted through its certificate.
            conns["continuity_pagerduty"] = {
                "conn_type": "pagerduty_events",
                "host": f"https://127.0.0.1:{self.state['receivers'].get('https_port')}/pagerduty",
                "password": self.password("pagerduty")[:32],
                "extra": {"ca_bundle": str(self.receivers_dir / "tls" / "receivers-cert.pem")},
            }
        if "ssh" in self.state:
            host_key = " ".join((self.ssh_dir / "host_ed25519.pub").read_text().split()[:2])
            logins = {SSH_CONN_ID.format(node=node.name): self.user.name for node in topology.nodes}
            logins |= {app_ssh_conn_id(region): APP_HOST_USER
                       for region in (self.policy.application.regions if self.policy.application else {})}
            for conn_id, login in logins.items():
                conns[conn_id] = {
                    "conn_type": "ssh", "host": "127.0.0.1", "port": self.state["ssh"]["port"], "login": login,
                    "extra": {"key_file": str(self.ssh_dir / "client_ed25519"), "host_key": host_key,
                              "look_for_keys": "false"},
                }
        keyring = self.keyring() if self.key_file.exists() else None
        conns["continuity_keyring"] = {
            "conn_type": "generic", "login": keyring.active if keyring else None,
            "password": keyring.to_json() if keyring else None,
        }
        return conns

    def environment(self) -> dict[str, str]:
        """Every variable Airflow needs to run this project's DAGs against the sandbox (secrets included)."""
        env = self.public_environment()
        for conn_id, conn in self.connections().items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        return env

    def public_environment(self) -> dict[str, str]:
        return {
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(project_dir() / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(project_dir() / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            SANDBOX_ENV_VAR: str(self.root),
            "CONTINUITY_WAL_SPOOL": str(self.spool_dir),
            PROJECT_ENV_VAR: str(project_dir()),
            INCLUDE_ENV_VAR: str(include_dir()),
            POLICY_ENV_VAR: str(policy_path().absolute()),
        }

    def write_connections(self) -> None:
        lines = [f"{key}={shlex.quote(value)}" for key, value in self.environment().items() if key.startswith("AIRFLOW_CONN_")]
        write_private(self.connections_file, "# Airflow connections for the sandbox. Secret: mode 0600.\n" + "\n".join(lines) + "\n")

    def env_script(self) -> str:
        """Shell exports for another terminal; secrets are sourced from the 0600 file, never printed."""
        from continuity_lab.controlplane import ControlPlane  # `continuity run`'s metadata database, if one ran here

        lines = [f"export {key}={shlex.quote(value)}" for key, value in self.public_environment().items()]
        lines.append(f"set -a; . {shlex.quote(str(self.connections_file))}; set +a")
        # The running Airflow's own metadata (PostgreSQL), so `airflow dags test` here sees its runs and
        # variables; read when sourced, since `continuity run` may start after this was printed.
        metadata = shlex.quote(str(ControlPlane(root=self.root).environment_file))
        lines.append(f"if [ -r {metadata} ]; then set -a; . {metadata}; set +a; fi")
        return "\n".join(lines) + "\n"

    # -- down --------------------------------------------------------------------------------
    def down(self, *, purge: bool = False) -> list[str]:
        """Stop what `up` started (by recorded pid). Safe to run twice. Returns what was stopped."""
        self.reload()
        from continuity_lab.controlplane import ControlPlane  # a distributed run's orchestrator, if one ran here

        # The orchestrator first: no task may start against a sandbox that is going away.
        stopped: list[str] = ControlPlane(root=self.root).down()
        if self.state_file.exists() or self._state is not None:
            state = self.state
            for region in list(state.get("application", {})):
                if self.stop_application(region, state=state["application"][region]["state"]):
                    stopped.append(f"application {region}")
            if self.stop_wal_pusher():
                stopped.append("wal pusher")
            receivers_pid = state.get("receivers", {}).get("pid")
            if is_our_process(receivers_pid, "continuity_lab.receivers"):
                stop_pid(receivers_pid, name="receivers", sig=signal.SIGTERM)
                stopped.append("receivers")
            for region, entry in reversed(list(state.get("redis", {}).items())):  # the replica first
                if is_our_process(entry.get("pid"), "redis-server"):
                    stop_pid(entry["pid"], name=f"Redis {region}", sig=signal.SIGTERM)
                    stopped.append(f"redis {region}")
            if self.stop_ssh():
                stopped.append("sshd")
            for region in list(state.get("gateways", {})):
                if self._stop_gateway(region):
                    stopped.append(f"s3 gateway {region}")
            s3_pid = state.get("s3", {}).get("pid")
            if is_our_process(s3_pid, "moto"):
                stop_pid(s3_pid, name="S3 endpoint")
                stopped.append("s3 endpoint")
            bouncer_pid = read_pid(self.pgbouncer_dir / "pgbouncer.pid")
            if is_our_process(bouncer_pid, "pgbouncer"):
                stop_pid(bouncer_pid, name="PgBouncer", sig=signal.SIGTERM)
                stopped.append("pgbouncer")
            for name in reversed([n for n in self.node_names if n in state.get("nodes", {})]):
                try:
                    if self.cluster(name).stop():
                        stopped.append(f"postgres {name}")
                except ClusterError as exc:
                    log.warning("%s", exc)
        if purge and self.root.exists():
            shutil.rmtree(self.root)
            self._state = None
        return stopped

    # -- status ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Each node's role, port, replication state and lag; PgBouncer; the S3 endpoint."""
        self.reload()
        result: dict[str, Any] = {"root": str(self.root), "nodes": {}, "pgbouncer": {}, "s3": {}}
        primary_rows: dict[str, Any] = {}
        for name in self.node_names:
            info = self.state["nodes"][name]
            entry: dict[str, Any] = {"port": info["port"], "region": info["region"], "running": self.cluster(name).running}
            try:
                node = self.node(name)
                in_recovery = node.is_in_recovery()
                entry["role"] = "standby" if in_recovery else "primary"
                entry["timeline"] = node.timeline()
                if not in_recovery:
                    primary_rows = {r.application_name: as_dict(r) for r in node.replication()}
            except NodeUnreachable as exc:
                entry["role"] = "down"
                entry["error"] = str(exc)
            result["nodes"][name] = entry
        for name, entry in result["nodes"].items():
            if entry.get("role") == "standby":
                row = primary_rows.get(name)
                entry["replication"] = row["state"] if row else "not streaming"
                entry["sync_state"] = row["sync_state"] if row else None
                entry["lag_bytes"] = row["lag_bytes"] if row else None
        result["pgbouncer"] = {"port": self.pgbouncer_port, "running": pid_alive(read_pid(self.pgbouncer_dir / "pgbouncer.pid"))}
        result["s3"] = {"endpoint": self.s3_endpoint, "running": pid_alive(self.state["s3"].get("pid")),
                        "gateways": {region: {"endpoint": self.region_s3_endpoint(region),
                                              "running": is_our_process(entry.get("pid"), "continuity_lab.gateway")}
                                     for region, entry in self.state.get("gateways", {}).items()}}
        result["redis"] = {region: {"address": f"127.0.0.1:{entry['port']}", "role": entry["role"],
                                    "running": is_our_process(entry.get("pid"), "redis-server")}
                           for region, entry in self.state.get("redis", {}).items()}
        result["application"] = {
            region: {"state": entry["state"],
                     "instances": [{"name": web["name"], "url": f"http://127.0.0.1:{web['port']}", "kind": "web",
                                    "running": is_our_process(web.get("pid"), "continuity_lab.sampleapp")}
                                   for web in entry["web"]]
                     + [{"name": worker["name"], "kind": "worker",
                         "running": is_our_process(worker.get("pid"), "continuity_lab.sampleapp")}
                        for worker in entry["workers"]]}
            for region, entry in self.state.get("application", {}).items()}
        result["wal_pusher"] = {"running": self.wal_pusher_running, "spool": str(self.spool_dir),
                                "queued": len([p for p in self.spool_dir.iterdir() if not p.name.startswith(".")])
                                if self.spool_dir.is_dir() else None}
        receivers = self.state.get("receivers", {})
        result["receivers"] = {"smtp": f"127.0.0.1:{receivers.get('smtp_port')}", "webhooks": self.webhook_url
                               if receivers else None, "running": pid_alive(receivers.get("pid")),
                               "mail_dir": str(self.receivers_dir / "mail"),
                               "webhooks_dir": str(self.receivers_dir / "webhooks")}
        result["application_buckets"] = [
            {"category": name, "role": role, "bucket": bucket.bucket, "prefix": bucket.prefix, "region": bucket.region,
             "object_lock": role == "replica" and category.object_lock is not None}
            for name, category in (self.policy.objects.categories.items() if self.policy.objects else [])
            for role, bucket in [("source", category.source), *(("replica", r) for r in category.replicas)]
        ]
        return result
