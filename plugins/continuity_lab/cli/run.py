"""`continuity run` (what `make run` does): the sandbox, its first backups, then `airflow standalone`; with
`--distributed`, the CeleryExecutor deployment of `continuity_lab.controlplane` instead."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import TYPE_CHECKING

from continuity.cli.common import EXIT_FAILURE, EXIT_OK, _fail
from continuity_lab.cli.common import _sandbox
from continuity_lab.controlplane import METADATA_DATABASE, Component, ControlPlane, components

if TYPE_CHECKING:
    from continuity_lab.sandbox import Sandbox


def _prepare_airflow(airflow: Path, env: dict[str, str]) -> str | None:
    """Migrate the metadata DB and create the pools the DAGs need before the scheduler starts.

    A task naming a pool that does not exist is never scheduled, so the pools must exist first.
    """
    from continuity.dag_defaults import POOLS

    for argv in ([str(airflow), "db", "migrate"],
                 *([str(airflow), "pools", "set", name, str(slots), description]
                   for name, (slots, description) in POOLS.items())):
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            return f"`airflow {' '.join(argv[1:3])}` failed: {(done.stderr or done.stdout).strip()[-500:]}"
    return None


class ControlPlaneNotReady(Exception):
    """Airflow's metadata database (or broker) did not start, or Airflow could not be prepared on it."""

    def __init__(self, message: str, *, hint: str, lines: list[str]) -> None:
        super().__init__(message)
        self.hint = hint
        self.lines = lines  # what was reported before it failed


def _airflow_settings(args: argparse.Namespace, airflow: Path) -> dict[str, str]:
    """The Airflow settings `continuity run` adds to the environment (each overridable from the shell where
    it is a `setdefault`)."""
    env: dict[str, str] = {}

    def setdefault(key: str, value: str) -> None:
        env[key] = os.environ.get(key, value)

    env["AIRFLOW__API__PORT"] = str(args.port)
    # Loopback unless asked: the UI's admin password is generated and printed to a file, not a secret
    # to hand every network this machine is on.
    env["AIRFLOW__API__HOST"] = args.host
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://{_local_address(args.host)}:{args.port}/execution/"
    # `ceo`: the approver the policy names for public statements (communication.approvers).
    setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin,ceo:admin")
    # Tasks fork with the DAG files' imports loaded (about 0.8 s of CPU each otherwise): continuity_lab/executor.py.
    # The distributed run's Celery workers are set up by the control plane.
    if not args.distributed:
        setdefault("AIRFLOW__CORE__EXECUTOR", "continuity_lab.executor.PreloadingLocalExecutor")
    # The sandbox exists to be exercised: DAGs run on their schedules from the first start.
    setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    # The scheduler hands out the first runs' tasks while the API server, which serves the tasks' execution
    # API, may still be starting on a loaded machine. With Airflow's five tries over about 30 s, a task that
    # found it not listening failed before it ran (seen: a fresh start's health monitor, every check red
    # with "Connection refused"). Ten tries, 2 to 30 s apart, wait out a slow start.
    setdefault("AIRFLOW__WORKERS__EXECUTION_API_RETRIES", "10")
    setdefault("AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN", "2")
    setdefault("AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MAX", "30")
    # standalone starts its components as `airflow ...` subprocesses found on PATH.
    env["PATH"] = f"{airflow.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return env


def _prepare_control_plane(control_plane: ControlPlane, sandbox: Sandbox, args: argparse.Namespace, airflow: Path,
                           env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The metadata database (and, distributed, the broker) running and migrated, the pools there: (what to
    report, the settings that use them). Runs in a thread beside the sandbox's start: it reports by return."""
    lines: list[str] = []
    try:
        if args.distributed:
            control_region = sandbox.policy.control_region
            plane_env = control_plane.up(control_region=control_region)
            lines.append(f"the control plane of region {control_region} is up: Airflow's metadata database "
                         f"(PostgreSQL) and the Celery broker (Redis)")
        else:
            plane_env = control_plane.up_metadata()
    except Exception as exc:
        raise ControlPlaneNotReady(f"the control plane did not start: {exc}",
                                   hint=f"see the logs under {control_plane.directory}", lines=lines) from exc
    lines.append(f"Airflow's metadata: PostgreSQL database {METADATA_DATABASE} on 127.0.0.1:"
                 f"{control_plane.metadata_port()}, its password in {control_plane.secrets_file}; migrated, "
                 f"pools created")
    airflow_home = Path(env["AIRFLOW_HOME"])
    if (airflow_home / "airflow.db").exists():
        lines.append(f"note: {airflow_home / 'airflow.db'} (an earlier run's SQLite metadata, its run history) is no "
                     f"longer used; remove it when nothing in it is needed")
    problem = _prepare_airflow(airflow, {**env, **plane_env})
    if problem:
        raise ControlPlaneNotReady(problem, hint=f"AIRFLOW_HOME ({airflow_home}) must be writable", lines=lines)
    return lines, plane_env


# A worker that crashed is started again this many times, then left down (its log says why).
MAX_RESTARTS = 5


def cmd_run(args: argparse.Namespace) -> int:
    """Sandbox up, then Airflow in the foreground (standalone, or the distributed components); Ctrl-C
    stops both."""
    sandbox = _sandbox(args)
    airflow = Path(sys.executable).with_name("airflow")
    env = {**os.environ, **_airflow_settings(args, airflow), **sandbox.public_environment()}
    airflow_home = Path(env["AIRFLOW_HOME"])
    airflow_home.mkdir(parents=True, exist_ok=True)
    control_plane = ControlPlane(root=sandbox.root)
    # Airflow's metadata database, its migration and pools (about 10 s, mostly one core) need nothing of the
    # sandbox but its root: they are made ready beside the sandbox's start (initdb, base backups, the first
    # backups: much of it waiting on disks and servers) instead of after it.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="control-plane") as beside:
        preparing = beside.submit(_prepare_control_plane, control_plane, sandbox, args, airflow, dict(env))
        try:
            sandbox.up(scale=args.scale)
            # Protected from the first minute, and the first scheduled runs find backups to work on.
            taken = sandbox.take_first_backups(report=lambda message: print(message, flush=True))
        except BaseException:
            wait_for_futures([preparing])
            control_plane.down()
            sandbox.down()
            raise
    if taken:
        print(f"first backups taken: {len(taken)}", flush=True)
    try:
        lines, plane_env = preparing.result()
    except ControlPlaneNotReady as exc:
        for line in exc.lines:
            print(line, flush=True)
        control_plane.down()
        sandbox.down()
        return _fail(str(exc), exc.hint + "; the sandbox was stopped", EXIT_FAILURE)
    for line in lines:
        print(line, flush=True)
    env.update(sandbox.environment())  # the connections: the sandbox's ports are known now
    env.update(plane_env)
    password_file = airflow_home / "simple_auth_manager_passwords.json.generated"
    if args.distributed:
        try:
            for line in control_plane.grant_access(python=Path(sys.executable), env=env):
                print(line, flush=True)
        except Exception as exc:
            control_plane.down()
            sandbox.down()
            return _fail(str(exc), "see the FAB provider's message above; the sandbox was stopped", EXIT_FAILURE)
        password_file = control_plane.users_file
    if args.distributed:
        wanted = components(sandbox.policy, api_port=args.port)
        print(f"starting Airflow with the CeleryExecutor (AIRFLOW_HOME={airflow_home}): "
              f"{', '.join(c.name for c in wanted)}; logs in {airflow_home}/<component>.log", flush=True)
    else:
        print(f"starting Airflow (AIRFLOW_HOME={airflow_home}); logs in {airflow_home / 'standalone.log'}", flush=True)
        wanted = [Component("standalone", ["standalone"], essential=True)]

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    announced = False
    ended: Component | None = None
    reported: set[str] = set()
    restarts: dict[str, int] = {}
    running: dict[Component, subprocess.Popen] = {}
    try:
        for component in wanted:
            running[component] = control_plane.start(component, airflow=airflow, env=env, log_dir=airflow_home)
        while not stopping and ended is None:
            for component, process in list(running.items()):
                if process.poll() is None or component.name in reported:
                    continue
                if component.essential:
                    ended = component
                elif control_plane.is_lost(component.name) or restarts.get(component.name, 0) >= MAX_RESTARTS:
                    # A region lost with its worker (or a worker that cannot stay up): its queue waits; the
                    # orchestrator goes on.
                    reported.add(component.name)
                    print(f"{component.name} stopped for good (exit code {process.returncode}, "
                          f"{restarts.get(component.name, 0)} restarts); tasks on its queue wait for it", flush=True)
                else:
                    restarts[component.name] = restarts.get(component.name, 0) + 1
                    # A worker that crashed comes back, as under a service manager; the scheduler fails the
                    # tasks it was running once their heartbeats stop, and retries them.
                    print(f"{component.name} exited with code {process.returncode}; restarting it", flush=True)
                    running[component] = control_plane.start(component, airflow=airflow, env=env,
                                                             log_dir=airflow_home)
            if not announced and _port_open(_local_address(args.host), args.port) and password_file.exists():
                print(
                    f"\nAirflow UI: http://{_ui_address(args.host)}:{args.port}\n"
                    + (f"log in as admin (dr_admin), operator-1 or operator-2 (dr_operator) or viewer (dr_viewer) "
                       f"with the passwords in {password_file} "
                       f"(`jq -r '.[] | select(.username==\"admin\").password' {password_file}`)\n"
                       if args.distributed else
                       f"log in as admin with the password in {password_file} "
                       f"(`jq -r .admin {password_file}`)\n") +
                    "every DAG of dags/ is loaded; connections point at the sandbox.\n"
                    "Ctrl-C stops Airflow and the sandbox.",
                    flush=True,
                )
                announced = True
            time.sleep(1)
    finally:
        print("\nstopping Airflow ...", flush=True)
        # The control plane stops what it recorded, task processes included; `sandbox down` would do the same.
        airflow_stopped = control_plane.down()
        for process in running.values():
            process.wait()  # reaped: every one of them is dead now
        print(f"stopped Airflow: {', '.join(airflow_stopped) or 'nothing (it had exited)'}", flush=True)
        print("stopping the sandbox ...", flush=True)
        stopped = sandbox.down()
        print(f"stopped: {', '.join(stopped) or 'nothing'}")
    if ended is not None:
        log_name = ended.name.replace(" ", "-")
        print(f"airflow {ended.name} exited with code {running[ended].returncode}; see "
              f"{airflow_home / f'{log_name}.log'}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _local_address(host: str) -> str:
    """Where processes on this machine reach an API server bound to `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "127.0.0.1", "localhost") else ("::1" if host == "::" else host)


def _ui_address(host: str) -> str:
    """The UI's address as a person types it: localhost for loopback or every interface."""
    return "localhost" if host in ("0.0.0.0", "::", "", "127.0.0.1", "localhost") else host


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
