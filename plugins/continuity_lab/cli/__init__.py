"""The development lab's commands on the `continuity` command line: `continuity sandbox ...` and `continuity run`.
The product's CLI finds `add_commands` by name (`continuity.policy.registry`); it never imports the lab."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

from continuity.cli.common import EXIT_FAILURE, _fail
from continuity_lab.cli.run import cmd_run
from continuity_lab.cli.sandbox import (cmd_sandbox_app, cmd_sandbox_down, cmd_sandbox_env, cmd_sandbox_seed,
                                        cmd_sandbox_status, cmd_sandbox_up)
from continuity_lab.processes import SandboxError


def _lab_command(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The lab's own failures as the CLI reports every failure: one line (HINT inside), exit 1."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except SandboxError as exc:
            return _fail(str(exc), None, EXIT_FAILURE)

    return run


def add_commands(sub: argparse._SubParsersAction, *,
                 with_root: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    sandbox = sub.add_parser("sandbox", help="the local DR sandbox").add_subparsers(dest="action", required=True)
    up = with_root(sandbox.add_parser("up", help="start (first time: build) the sandbox"))
    up.add_argument("--scale", type=float, default=1.0, help="sample data size multiplier (default 1)")
    up.add_argument("--no-wal-pusher", dest="wal_pusher", action="store_false",
                    help="leave WAL in the spool for dr_wal_archive instead of pushing it as it closes")
    up.add_argument("--ssh", action="store_true",
                    help="also an SSH server on loopback, and a policy (policy-ssh.yaml) whose failover reaches "
                         "the nodes and each region's application over SSH")
    up.set_defaults(func=_lab_command(cmd_sandbox_up))
    down = with_root(sandbox.add_parser("down", help="stop every process `up` started"))
    down.add_argument("--purge", action="store_true", help="also delete the sandbox's data, key and state")
    down.set_defaults(func=_lab_command(cmd_sandbox_down))
    status = with_root(sandbox.add_parser("status", help="roles, ports, replication and lag"))
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_lab_command(cmd_sandbox_status))
    with_root(sandbox.add_parser("env", help="shell exports for Airflow against the sandbox")).set_defaults(func=_lab_command(cmd_sandbox_env))
    app = with_root(sandbox.add_parser(
        "app", help="the sample application of a region: what service control over SSH runs on the app host"))
    app.add_argument("app_action", choices=["start", "stop", "status", "promote-cache", "follow-cache", "verify-start",
                                            "verify-stop"])
    app.add_argument("region")
    app.add_argument("--upstream-port", type=int, help="follow-cache: the port of the Redis to replicate (the "
                                                       "upstream region's, on this host)")
    app.add_argument("--url", help="verify-stop: the verification instance's URL (verify-start reads the DSN on stdin)")
    app.set_defaults(func=_lab_command(cmd_sandbox_app))
    seed = with_root(sandbox.add_parser("seed", help="fill the empty sample application database"))
    seed.add_argument("--scale", type=float, default=1.0)
    seed.add_argument("--seed", type=int, default=42)
    seed.set_defaults(func=_lab_command(cmd_sandbox_seed))

    run = with_root(sub.add_parser("run", help="sandbox + Airflow: standalone (what `make run` does) or --distributed (`make run-distributed`)"))
    run.add_argument("--scale", type=float, default=1.0)
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--host", default="127.0.0.1",
                     help="the address the API server (UI) listens on: loopback unless given (0.0.0.0: every "
                          "network this machine is on)")
    run.add_argument("--distributed", action="store_true",
                     help="CeleryExecutor instead of standalone: a PostgreSQL metadata database and a Redis broker in "
                          "the policy's control region, api-server, scheduler, dag-processor, triggerer and one "
                          "Celery worker per region on its queue")
    run.set_defaults(func=_lab_command(cmd_run))
