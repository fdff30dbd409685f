"""The local DR sandbox: real PostgreSQL with streaming replication, PgBouncer and an S3 endpoint.

`Sandbox(root=...).up()` builds (first time) or restarts (later) everything the policy's topology
names: a primary, two synchronous standbys (any one acknowledging) and an asynchronous "DR region" standby on loopback ports,
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
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from continuity_lab import sampledata
from continuity.postgres.cluster import (
    ClusterError,
    ServiceUser,
    conf_value,
    find_bindir,
    find_pgbouncer,
    free_port,
    pid_alive,
    port_is_free,
    stop_pid,
    write_private,
)
from continuity.storage.keys import Keyring
from continuity.policy.model import Policy, synchronous_standby_names
from continuity.policy.loading import load_policy
from continuity.policy.project import (INCLUDE_ENV_VAR, POLICY_ENV_VAR, PROJECT_ENV_VAR, SANDBOX_ENV_VAR, include_dir,
                                policy_path, project_dir)
from continuity.postgres.node import NodeUnreachable, as_dict
from continuity_lab.parts.application import ApplicationPart
from continuity_lab.parts.nodes import NodesPart
from continuity_lab.parts.services import ServicesPart
from continuity_lab.parts.ssh import SshPart
from continuity_lab.parts.storage import StoragePart
from continuity_lab.processes import (APP_DATABASE, APP_HOST_USER, PG_HBA, ROLES, S3_ACCESS_KEY, SHARED_SETTINGS,
                                      SSH_CONN_ID, SandboxError, app_ssh_conn_id, archive_script_source,
                                      find_redis_server, is_our_process, read_pid, sampleapps_using)

log = logging.getLogger(__name__)


class Sandbox(NodesPart, StoragePart, ApplicationPart, SshPart, ServicesPart):
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

    def password(self, role: str) -> str:
        return self.state["secrets"][role]

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
            self.start_guards(started)
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
        settings["max_slot_wal_keep_size"] = f"{self.policy.health_monitor.max_slot_wal_keep_setting}MB"
        conf = "\n".join(f"{k} = {conf_value(v)}" for k, v in settings.items())
        self.user.write_file(primary.data_dir / "continuity.conf", "# Written by continuity sandbox.\n" + conf + "\n")
        with open(primary.data_dir / "postgresql.conf", "a") as handle:
            handle.write("\ninclude_if_exists = 'continuity.conf'\ninclude_if_exists = 'node.conf'\n")
        self.user.write_file(primary.data_dir / "pg_hba.conf", PG_HBA)
        self._start_new_node(primary_name, started, synchronous_names="")
        primary = self.cluster(primary_name)
        self._create_roles(primary)

        for standby in self.policy.topology.standbys:
            cluster = self.cluster(standby.name)
            log.info("cloning standby %s (%s) from %s with pg_basebackup", standby.name, standby.region, primary_name)
            cluster.base_backup_from(source_port=primary.port, user="replicator",
                                     password=self.password("replicator"), slot=standby.name)
            self.user.write_file(cluster.data_dir / "standby.signal", "")
            self._start_new_node(standby.name, started, upstream=primary_name)

        sync_names = synchronous_standby_names([n.name for n in self.policy.topology.standbys if n.synchronous],
                                               quorum=self.policy.topology.synchronous_quorum)
        self._write_node_conf(primary_name, synchronous_names=sync_names)
        primary.psql("SELECT pg_reload_conf();")
        self.wait_streaming(timeout=60)

        with psycopg.connect(self.app_conninfo(through_pgbouncer=False)) as conn:
            counts = sampledata.generate(conn, scale=scale)
        log.info("sample application database %r generated at scale %s: %s", APP_DATABASE, scale, counts)

    def _start_new_node(self, name: str, started: list[str], *, synchronous_names: str = "",
                        upstream: str | None = None) -> None:
        """Write node `name`'s settings and start it. While the sandbox is being built nothing but its own
        settings knows a node's port, so a port another process bound since it was chosen (seen on a busy
        machine: the run beside us, or an outgoing connection) moves the node to a fresh one instead of failing
        `up`; up to three times."""
        for attempt in range(1, 4):
            cluster = self.cluster(name)
            if not port_is_free(cluster.port):
                self._move_node_port(name, attempt)
                continue
            self._write_node_conf(name, synchronous_names=synchronous_names, upstream=upstream)
            log_size = cluster.log_file.stat().st_size if cluster.log_file.exists() else 0
            try:
                cluster.start()
            except ClusterError:
                if not _bind_refused(cluster.log_file, since=log_size):
                    raise
                self._move_node_port(name, attempt)
                continue
            started.append(f"postgres {name}")
            return
        raise SandboxError(f"node {name} found its port taken three times (log: {self.cluster(name).log_file}). "
                           f"HINT: something on this machine is binding many ports; run `up` again.")

    def _move_node_port(self, name: str, attempt: int) -> None:
        taken = self.state["nodes"][name]["port"]
        self.state["nodes"][name]["port"] = free_port()
        log.info("port %s of new node %s is taken by another process (attempt %d): moving it to %s",
                 taken, name, attempt, self.state["nodes"][name]["port"])

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
        lost += self.stop_guards(regions=[region], sig=signal.SIGKILL)
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
        self.start_guards(started, regions=[region])
        self._save_state()
        return started

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
            # Then any instance of this sandbox's application no state records (a verification instance whose
            # task was killed, one started over SSH by another process): found by the gateways it uses.
            gateways = {self.region_s3_endpoint(region) for region in state.get("application", {})}
            strays = sampleapps_using(gateways) if gateways else []
            for pid in strays:
                stop_pid(pid, name="an application instance no state records", sig=signal.SIGTERM)
            if strays:
                stopped.append(f"{len(strays)} unrecorded application instance(s)")
            if self.stop_wal_pusher():
                stopped.append("wal pusher")
            stopped += self.stop_guards()
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


def _bind_refused(log_file: Path, *, since: int) -> bool:
    """Whether the server's log, from byte `since`, says it could not bind its port."""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(since)
            return b"Address already in use" in handle.read()
    except OSError:
        return False
