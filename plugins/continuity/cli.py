"""The `continuity` command: the sandbox, the policy, and (later) backups and restores without Airflow.

Errors are one line on stderr with a `HINT:` where there is one; details go to the debug log
(`-v`). Exit codes are distinct per failure class so scripts can tell them apart.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from continuity.localcluster import ClusterError
from continuity.policy import PolicyError, load_policy
from continuity.postgres import NodeUnreachable

log = logging.getLogger("continuity")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_POLICY = 3
EXIT_UNREACHABLE = 4
EXIT_INTEGRITY = 5
EXIT_MISSING_KEY = 6
EXIT_INTERRUPTED = 130


def _sandbox(args: argparse.Namespace):
    from continuity.sandbox import Sandbox

    return Sandbox(root=args.root, policy=load_policy(args.policy))


def cmd_sandbox_up(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    sandbox.up(scale=args.scale)
    _print_status(sandbox.status(), as_json=False)
    print(f"\nIn another terminal: eval \"$(continuity sandbox env --root {sandbox.root})\"")
    return EXIT_OK


def cmd_sandbox_down(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    stopped = sandbox.down(purge=args.purge)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    if args.purge:
        print(f"removed {sandbox.root}")
    return EXIT_OK


def cmd_sandbox_status(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    status = sandbox.status()
    _print_status(status, as_json=args.json)
    healthy = all(n.get("role") != "down" for n in status["nodes"].values())
    return EXIT_OK if healthy else EXIT_UNREACHABLE


def cmd_sandbox_env(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    sandbox.state  # noqa: B018 - fails with a clear message when there is no sandbox
    sys.stdout.write(sandbox.env_script())
    return EXIT_OK


def cmd_sandbox_seed(args: argparse.Namespace) -> int:
    import psycopg

    from continuity import sampledata

    sandbox = _sandbox(args)
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        counts = sampledata.generate(conn, scale=args.scale, seed=args.seed)
    for table, count in counts.items():
        print(f"{table:12} {count:>10,} rows")
    return EXIT_OK


def _print_status(status: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, default=str))
        return
    print(f"sandbox {status['root']}")
    print(f"{'node':8} {'role':8} {'port':>6} {'region':10} {'replication':12} {'sync':6} {'lag bytes':>10}")
    for name, node in status["nodes"].items():
        lag = node.get("lag_bytes")
        print(
            f"{name:8} {node.get('role', '?'):8} {node['port']:>6} {node['region']:10} "
            f"{node.get('replication', '-'):12} {node.get('sync_state') or '-':6} {'-' if lag is None else lag:>10}"
        )
        if node.get("error"):
            print(f"         {node['error']}")
    bouncer = status["pgbouncer"]
    print(f"pgbouncer  127.0.0.1:{bouncer['port']} ({'running' if bouncer['running'] else 'stopped'})")
    s3 = status["s3"]
    print(f"s3         {s3['endpoint']} ({'running' if s3['running'] else 'stopped'})")


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    functions = len(policy.business_functions)
    print(
        f"policy OK: {functions} business functions, {len(policy.tiers)} tiers, "
        f"{len(policy.data_categories)} data categories, {len(policy.topology.nodes)} nodes, "
        f"{len(policy.storage.locations)} storage locations"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Sandbox up, then `airflow standalone` in the foreground; Ctrl-C stops both."""
    sandbox = _sandbox(args)
    sandbox.up(scale=args.scale)
    env = {**os.environ, **sandbox.environment()}
    airflow_home = Path(env["AIRFLOW_HOME"])
    airflow_home.mkdir(parents=True, exist_ok=True)
    env["AIRFLOW__API__PORT"] = str(args.port)
    env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] = f"http://localhost:{args.port}/execution/"
    env.setdefault("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "admin:admin")
    # The sandbox exists to be exercised: DAGs run on their schedules from the first start.
    env.setdefault("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    airflow = Path(sys.executable).with_name("airflow")
    # standalone starts its components as `airflow ...` subprocesses found on PATH.
    env["PATH"] = f"{airflow.parent}{os.pathsep}{env.get('PATH', '')}"
    print(f"starting Airflow (AIRFLOW_HOME={airflow_home}); logs in {airflow_home / 'standalone.log'}", flush=True)
    with open(airflow_home / "standalone.log", "ab") as log_file:
        process = subprocess.Popen([str(airflow), "standalone"], env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   start_new_session=True)

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    password_file = airflow_home / "simple_auth_manager_passwords.json.generated"
    announced = False
    try:
        while not stopping and process.poll() is None:
            if not announced and _port_open(args.port) and password_file.exists():
                print(
                    f"\nAirflow UI: http://localhost:{args.port}\n"
                    f"log in as admin with the password in {password_file} "
                    f"(`jq -r .admin {password_file}`)\n"
                    f"every DAG of dags/ is loaded; connections point at the sandbox.\n"
                    f"Ctrl-C stops Airflow and the sandbox.",
                    flush=True,
                )
                announced = True
            time.sleep(1)
    finally:
        if process.poll() is None:
            print("\nstopping Airflow ...", flush=True)
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        _kill_process_group(process.pid)
        print("stopping the sandbox ...", flush=True)
        stopped = sandbox.down()
        print(f"stopped: {', '.join(stopped) or 'nothing'}")
    if not stopping and process.returncode:
        print(f"airflow standalone exited with code {process.returncode}; see {airflow_home / 'standalone.log'}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _kill_process_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _port_open(port: int) -> bool:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="continuity", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (debug level)")
    parser.add_argument("--policy", help="policy file (default: $CONTINUITY_POLICY or include/policy.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--root", help="sandbox directory (default: $CONTINUITY_SANDBOX or .sandbox)")
        return p

    sandbox = sub.add_parser("sandbox", help="the local DR sandbox").add_subparsers(dest="action", required=True)
    up = with_root(sandbox.add_parser("up", help="start (first time: build) the sandbox"))
    up.add_argument("--scale", type=float, default=1.0, help="sample data size multiplier (default 1)")
    up.set_defaults(func=cmd_sandbox_up)
    down = with_root(sandbox.add_parser("down", help="stop every process `up` started"))
    down.add_argument("--purge", action="store_true", help="also delete the sandbox's data, key and state")
    down.set_defaults(func=cmd_sandbox_down)
    status = with_root(sandbox.add_parser("status", help="roles, ports, replication and lag"))
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_sandbox_status)
    with_root(sandbox.add_parser("env", help="shell exports for Airflow against the sandbox")).set_defaults(func=cmd_sandbox_env)
    seed = with_root(sandbox.add_parser("seed", help="fill the empty sample application database"))
    seed.add_argument("--scale", type=float, default=1.0)
    seed.add_argument("--seed", type=int, default=42)
    seed.set_defaults(func=cmd_sandbox_seed)

    policy = sub.add_parser("policy", help="the policy file").add_subparsers(dest="action", required=True)
    policy.add_parser("check", help="validate the policy file").set_defaults(func=cmd_policy_check)

    run = with_root(sub.add_parser("run", help="sandbox + airflow standalone (what `make run` does)"))
    run.add_argument("--scale", type=float, default=1.0)
    run.add_argument("--port", type=int, default=8080)
    run.set_defaults(func=cmd_run)
    return parser


def main(args: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parsed = parser.parse_args(args)
    logging.basicConfig(
        level=logging.DEBUG if parsed.verbose else logging.INFO,
        format="%(message)s" if not parsed.verbose else "%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from continuity.sandbox import SandboxError

    try:
        return parsed.func(parsed)
    except PolicyError as exc:
        return _fail(str(exc), "fix the policy file; `continuity policy check` validates it", EXIT_POLICY)
    except NodeUnreachable as exc:
        return _fail(str(exc), "is the node running? `continuity sandbox status` shows the sandbox", EXIT_UNREACHABLE)
    except (SandboxError, ClusterError) as exc:
        return _fail(str(exc), None, EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail(message: str, hint: str | None, code: int) -> int:
    log.debug("failure details", exc_info=True)
    print(f"continuity: error: {message}", file=sys.stderr)
    if hint and "HINT:" not in message:
        print(f"HINT: {hint}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
