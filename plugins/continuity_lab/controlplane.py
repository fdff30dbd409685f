"""Airflow's own services on one machine: the metadata database of every `continuity run`, and the
distributed orchestrator of `continuity run --distributed`.

Every run keeps Airflow's metadata in PostgreSQL, in a small cluster of the control plane's own: SQLite
locks under the four components of `airflow standalone` and the task processes writing at once (seen: the
scheduler loop crashing and a REST trigger answering 500 with "database is locked"), and the protected
application's cluster is no home for it (a drill or a failover moves it).

What a production deployment runs on several hosts, started here side by side: Airflow's metadata
database (its own PostgreSQL cluster, never one of the application's nodes), a Redis as the Celery
broker, the API server, scheduler, DAG processor and triggerer, and one Celery worker per region
listening on that region's queue (`dag_defaults.region_queue`). The metadata database, the broker and
the core components belong to the policy's control region (`deployment.control_region`), which the
policy keeps out of the primary region: stopping the primary region's worker and database leaves an
orchestrator that can still fail over.

Every process is recorded in `<sandbox>/control-plane/state.json`, so `continuity sandbox down` stops
what a crashed run left behind. The database and broker passwords are generated once and kept in a
0600 file; they reach the Airflow processes through their environment, never a command line.

Who may do what is production's too: the FAB auth manager with the roles of `continuity.policy.access`
(dr_viewer, dr_operator, dr_admin) and the sandbox's users, their passwords in another 0600 file.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

import psutil

from continuity.policy.access import AUTH_MANAGER, AccessUser, sandbox_users
from continuity.dag_defaults import region_queue
from continuity.postgres.cluster import (LocalCluster, ServiceUser, find_bindir, free_port, pid_alive, port_is_free,
                                     stop_pid, wait_for_port, write_private)

log = logging.getLogger(__name__)

METADATA_DATABASE = "airflow"
METADATA_ROLE = "airflow"
USERS_FILE = "users.json"  # the people allowed in and their generated passwords (0600)
# Tasks mostly wait on PostgreSQL, S3 and people; a handful per worker keeps 2 cores busy without a queue.
WORKER_CONCURRENCY = 6


class ControlPlaneError(RuntimeError):
    """The distributed orchestrator cannot start; the message names the part."""


@dataclass(frozen=True, eq=False)
class Component:
    """One Airflow process: `airflow <argv>`; an essential one ending ends the run, a worker's does not
    (a region's worker may be lost while the orchestrator carries on)."""

    name: str
    argv: list[str]
    essential: bool
    region: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def worker_regions(policy: Any) -> list[str]:
    """Every region with database nodes, and the control region: each gets a worker."""
    regions = [policy.topology.primary_region, policy.topology.dr_region,
               *(node.region for node in policy.topology.nodes), policy.control_region]
    return list(dict.fromkeys(regions))


def components(policy: Any, *, api_port: int) -> list[Component]:
    """The processes of a distributed run. Tasks without a queue of their own go to the control
    region's (AIRFLOW__OPERATORS__DEFAULT_QUEUE, see `airflow_environment`)."""
    core = [Component("api-server", ["api-server", "--port", str(api_port)], essential=True),
            Component("scheduler", ["scheduler"], essential=True),
            Component("dag-processor", ["dag-processor"], essential=True),
            Component("triggerer", ["triggerer"], essential=True)]
    # Every worker writes its task logs into the shared AIRFLOW_HOME, which the API server reads: no
    # worker serves logs (two on one host would fight over the port).
    workers = [Component(f"worker {region}", ["celery", "worker", "--queues", region_queue(region),
                                              "--concurrency", str(WORKER_CONCURRENCY),
                                              "--celery-hostname", f"{region}@%h", "--skip-serve-logs"],
                         essential=False, region=region) for region in worker_regions(policy)]
    return core + workers


class ControlPlane:
    """The metadata database, the broker and the recorded Airflow processes of a distributed run.

    :param root: the sandbox's root; everything lives under `<root>/control-plane/`.
    """

    def __init__(self, *, root: Path) -> None:
        self.directory = Path(root) / "control-plane"
        self.state_file = self.directory / "state.json"

    # -- state -----------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}

    def _save(self, state: dict[str, Any]) -> None:
        # Replaced whole: a crash mid-write must not lose the pids `down` needs.
        self.directory.mkdir(parents=True, exist_ok=True)  # standalone records its one process here too
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.state_file)

    def _private(self, name: str, make: Callable[[], Any]) -> Any:
        """A JSON file of secrets under the control plane's directory, made once."""
        path = self.directory / name
        if path.exists():
            return json.loads(path.read_text())
        values = make()
        self.directory.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps(values))
        return values

    def _secrets(self) -> dict[str, str]:
        return self._private(self.secrets_file.name, lambda: {"metadata": secrets.token_urlsafe(24),
                                                      "broker": secrets.token_urlsafe(24)})

    @property
    def users_file(self) -> Path:
        return self.directory / USERS_FILE

    def users(self) -> list[AccessUser]:
        """The sandbox's people (continuity.policy.access), passwords generated once into `users_file` (0600)."""
        return [AccessUser.model_validate(entry) for entry in
                self._private(USERS_FILE, lambda: [u.model_dump() for u in sandbox_users()])]

    def grant_access(self, *, python: Path, env: dict[str, str]) -> list[str]:
        """Roles and users into the FAB auth manager of the migrated metadata database; the passwords go on
        stdin, never argv. Returns what it did, one line each."""
        payload = json.dumps([u.model_dump() for u in self.users()])
        done = subprocess.run([str(python), "-m", "continuity.auth.fab"], input=payload, env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise ControlPlaneError(f"roles and users not written into Airflow: "
                                    f"{(done.stderr or done.stdout).strip()[-800:]}")
        return done.stdout.splitlines()

    def _cluster(self, state: dict[str, Any]) -> LocalCluster:
        return LocalCluster(name="airflow metadata", data_dir=self.directory / "metadata",
                            port=state["metadata"]["port"], socket_dir=self.directory / "metadata-socket",
                            log_file=self.directory / "metadata-log" / "postgresql.log", user=ServiceUser.detect(),
                            bindir=find_bindir())

    # -- up ----------------------------------------------------------------------------------------
    def up_metadata(self) -> dict[str, str]:
        """Airflow's metadata database running (created at the first start); returns the setting that uses
        it (the password included: for the processes' environment only) and writes the same into
        `environment_file` (0600) for another terminal's `airflow` commands."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # the postgres OS user reaches its data directory through it
        state = self._state()
        passwords = self._secrets()
        state.setdefault("metadata", {"port": free_port()})
        self._save(state)
        self._start_metadata(state, passwords["metadata"])
        env = self.metadata_environment()
        write_private(self.environment_file, "# Airflow's metadata database of `continuity run`. Secret: mode 0600.\n"
                       + "".join(f"{key}={shlex.quote(value)}\n" for key, value in env.items()))
        return env

    def up(self, *, control_region: str) -> dict[str, str]:
        """The metadata database and the broker running; returns the Airflow settings of the distributed run
        that use them (secrets included: for the processes' environment only)."""
        self.up_metadata()
        state = self._state()
        state.setdefault("broker", {"port": free_port(), "pid": None})
        state["control_region"] = control_region
        self._save(state)
        self._start_broker(state, self._secrets()["broker"])
        return self.airflow_environment(control_region=control_region)

    @property
    def environment_file(self) -> Path:
        """Shell assignments of the metadata database's connection (0600), for `continuity sandbox env`."""
        return self.directory / "airflow.env"

    @property
    def secrets_file(self) -> Path:
        """The generated passwords of the metadata database and the broker (0600)."""
        return self.directory / "secrets.json"

    def _start_metadata(self, state: dict[str, Any], password: str) -> None:
        cluster = self._cluster(state)
        # Every start, not only the first: a data directory restored or copied without them must still start.
        cluster.user.make_dir(cluster.socket_dir, 0o755)
        cluster.user.make_dir(cluster.log_file.parent, 0o755)  # written by the server's OS user
        if not cluster.exists:
            log.info("creating Airflow's metadata database (PostgreSQL on port %s)", cluster.port)
            cluster.initdb()
            settings = (f"port = {cluster.port}\nlisten_addresses = '127.0.0.1'\n"
                        f"unix_socket_directories = '{cluster.socket_dir}'\nmax_connections = 200\n")
            conf = cluster.data_dir / "postgresql.conf"
            cluster.user.write_file(conf, conf.read_text() + "\n# continuity control plane\n" + settings)
        if not cluster.running:
            if not port_is_free(cluster.port):
                # Ours to choose (nothing outside the control plane is told the port but through its files): another
                # process took it since it was chosen (a sandbox starting beside us, or after a reboot), so the
                # database moves to a free one rather than failing the run.
                taken, state["metadata"]["port"] = cluster.port, free_port()
                self._save(state)
                conf = cluster.data_dir / "postgresql.conf"
                moved = f"port = {state['metadata']['port']}  # {taken} was taken\n"
                cluster.user.write_file(conf, conf.read_text() + moved)
                log.info("port %s of Airflow's metadata database is taken by another process: moving it to %s",
                         taken, state["metadata"]["port"])
                cluster = self._cluster(state)
            cluster.start()
        # The role and database exist once; the password (SQL on stdin, never argv) is set every start.
        cluster.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{METADATA_ROLE}') THEN "
                     f"CREATE ROLE {METADATA_ROLE} LOGIN; END IF; END $$;\n"
                     f"ALTER ROLE {METADATA_ROLE} PASSWORD '{password}';\n")
        if not cluster.psql(f"SELECT 1 FROM pg_database WHERE datname = '{METADATA_DATABASE}'").strip():
            cluster.psql(f"CREATE DATABASE {METADATA_DATABASE} OWNER {METADATA_ROLE};")

    def _start_broker(self, state: dict[str, Any], password: str) -> None:
        from continuity_lab.processes import start_redis_server  # the sandbox's Redis start, one copy

        broker = state["broker"]
        if pid_alive(broker.get("pid")):
            return
        if not port_is_free(broker["port"]):
            broker["port"] = free_port()
        broker["pid"] = start_redis_server(directory=self.directory / "broker", port=broker["port"],
                                           password=password, log_file=self.directory / "broker.log", extra=[])
        self._save(state)
        wait_for_port(broker["port"], what="the Celery broker (Redis)")

    def metadata_url(self) -> str:
        """The SQLAlchemy URL of the metadata database (with its password: never log it)."""
        state, passwords = self._state(), self._secrets()
        return (f"postgresql+psycopg2://{METADATA_ROLE}:{passwords['metadata']}@127.0.0.1:"
                f"{state['metadata']['port']}/{METADATA_DATABASE}")

    def metadata_port(self) -> int:
        return int(self._state()["metadata"]["port"])

    def metadata_environment(self) -> dict[str, str]:
        return {"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_url()}

    def airflow_environment(self, *, control_region: str) -> dict[str, str]:
        state, passwords = self._state(), self._secrets()
        database = self.metadata_url()
        return {
            **self.metadata_environment(),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            # Each worker loads the DAG files' imports before its pool forks (continuity_lab/executor.py).
            "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "continuity_lab.celery_config.CELERY_CONFIG",
            # Users with roles (dr_viewer, dr_operator, dr_admin), as in production: see `grant_access`.
            "AIRFLOW__CORE__AUTH_MANAGER": AUTH_MANAGER,
            "AIRFLOW__CELERY__BROKER_URL": f"redis://:{passwords['broker']}@127.0.0.1:{state['broker']['port']}/0",
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{database}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            # A task whose worker vanished without acknowledging it is delivered again after this long;
            # the scheduler's heartbeat check fails it (and a retry starts) much sooner.
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            # How long a task whose worker died counts as running: 60 s, not the default 300 s, so a crashed
            # backup is retried (and a crashed failover step rolled back) within about a minute.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "60",
            "AIRFLOW__OPERATORS__DEFAULT_QUEUE": region_queue(control_region),
        }

    # -- the Airflow processes -----------------------------------------------------------------
    def start(self, component: Component, *, airflow: Path, env: dict[str, str], log_dir: Path) -> subprocess.Popen:
        """`airflow <component>` in its own process group, its output in `<log_dir>/<name>.log`."""
        log_file = log_dir / f"{component.name.replace(' ', '-')}.log"
        with open(log_file, "ab") as handle:
            process = subprocess.Popen([str(airflow), *component.argv], env={**env, **component.env}, stdout=handle,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            state = self._state()
            state.setdefault("processes", {})[component.name] = {"pid": process.pid, "region": component.region,
                                                                 "log": str(log_file)}
            self._save(state)
        except BaseException:
            # Unrecorded, nothing would ever stop it: it goes now.
            _kill_tree(process.pid)
            process.wait()
            raise
        return process

    def processes(self) -> dict[str, dict[str, Any]]:
        """Each recorded Airflow process: pid, region (workers), log, and whether it runs."""
        return {name: {**entry, "running": pid_alive(entry["pid"])}
                for name, entry in self._state().get("processes", {}).items()}

    def _worker(self, state: dict[str, Any], region: str) -> dict[str, Any]:
        entry = state.get("processes", {}).get(f"worker {region}")
        if entry is None:
            raise ControlPlaneError(f"no worker of region {region} was started here (workers: "
                                    f"{sorted(k for k in self.processes() if k.startswith('worker'))})")
        return entry

    def crash_worker(self, region: str) -> int:
        """The worker of `region` and every process under it (its task processes, which Airflow's supervisor
        puts in sessions of their own) killed at once, as when its host crashes; `continuity run` starts it
        again, as a service manager would. Returns its pid."""
        pid = self._worker(self._state(), region)["pid"]
        _kill_tree(pid)
        return pid

    def lose_worker(self, region: str) -> int:
        """The worker of `region` gone with its region: killed like `crash_worker`, and not started again.
        Returns its pid."""
        state = self._state()
        entry = self._worker(state, region)
        entry["lost"] = True
        self._save(state)
        _kill_tree(entry["pid"])
        return entry["pid"]

    def is_lost(self, name: str) -> bool:
        return bool(self._state().get("processes", {}).get(name, {}).get("lost"))

    # -- down ----------------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop every recorded process, the broker and the metadata database. Safe to run twice."""
        state = self._state()
        if not state:
            return []
        stopped: list[str] = []
        trees: dict[str, list[psutil.Process]] = {}
        for name, entry in state.get("processes", {}).items():
            if pid_alive(entry["pid"]):
                trees[name] = _tree(entry["pid"])  # before anything dies: orphans leave the tree
                _signal_group(entry["pid"], signal.SIGTERM)
                stopped.append(name)
        for name, entry in state.get("processes", {}).items():
            stop_pid(entry["pid"], name=name, sig=signal.SIGTERM, timeout=30)
            _kill(trees.get(name, []))  # what it started and left behind (task processes)
        state["processes"] = {}
        broker = state.get("broker", {})
        if pid_alive(broker.get("pid")):
            stop_pid(broker["pid"], name="Celery broker", sig=signal.SIGTERM)
            stopped.append("broker")
        if "metadata" in state and self._cluster(state).stop():
            stopped.append("metadata database")
        self._save(state)
        return stopped


def _tree(pid: int) -> list[psutil.Process]:
    """`pid` and every descendant (task processes run in sessions of their own: a process group misses them)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _kill(processes: list[psutil.Process]) -> None:
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant, all found before any dies (an orphan would escape the walk)."""
    _kill(_tree(pid))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
