"""The `continuity` command: the sandbox, the policy, backups, restores and keys without Airflow.

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

from botocore.exceptions import BotoCoreError, ClientError

from continuity.archive import ArchiveError
from continuity.keys import KeyringError
from continuity.kinds import BACKUP_KINDS
from continuity.localcluster import ClusterError
from continuity.policy import PolicyError, load_policy
from continuity.postgres import NodeUnreachable
from continuity.storage import StorageError

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


def cmd_run(args: argparse.Namespace) -> int:
    """Sandbox up, then `airflow standalone` in the foreground; Ctrl-C stops both."""
    sandbox = _sandbox(args)
    sandbox.up(scale=args.scale)
    try:
        # Protected from the first minute, and the first scheduled runs find backups to work on.
        taken = sandbox.take_first_backups(report=lambda message: print(message, flush=True))
    except BaseException:
        sandbox.down()
        raise
    if taken:
        print(f"first backups taken: {len(taken)}", flush=True)
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
    problem = _prepare_airflow(airflow, env)
    if problem:
        sandbox.down()
        return _fail(problem, f"AIRFLOW_HOME ({airflow_home}) must be writable; the sandbox was stopped", EXIT_FAILURE)
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


# -- backups, restore, keys (work with Airflow stopped) -------------------------------------------
def _context(args: argparse.Namespace):
    from continuity.emergency import build_context

    return build_context(policy=load_policy(args.policy), sandbox_root=getattr(args, "root", None),
                         key_file=getattr(args, "key_file", None))


def _manifest_summary(manifest) -> dict:
    return {
        "backup_id": manifest.backup_id, "kind": manifest.kind, "label": manifest.label,
        "finished_at": manifest.finished_at.isoformat(), "plaintext_bytes": manifest.plaintext_bytes,
        "stored_bytes": manifest.stored_bytes, "kek_id": manifest.key["kek_id"],
        "locations": sorted(manifest.locations),
    }


def cmd_backups_create(args: argparse.Namespace) -> int:
    from continuity.backup import create_backup

    ctx = _context(args)
    if args.source == "-":
        source = sys.stdin.buffer
    else:
        path = Path(args.source)
        if not path.is_file():
            raise UsageError(f"--from {args.source}: not a readable file")
        source = open(path, "rb")
    with source:
        manifest = create_backup(source, kind=args.kind, keyring=ctx.keyring, locations=list(ctx.locations.values()),
                                 required=ctx.required, label=args.label, backup_id=args.id,
                                 source_info={"file": "stdin" if args.source == "-" else str(Path(args.source).resolve())},
                                 report=lambda m: print(m, file=sys.stderr))
    print(json.dumps(_manifest_summary(manifest)) if args.json else manifest.backup_id)
    return EXIT_OK


def cmd_backups_list(args: argparse.Namespace) -> int:
    ctx = _context(args)
    catalog = ctx.catalog
    backups = catalog.list(kind=args.kind, location=args.location)
    if args.json:
        print(json.dumps({"backups": [_manifest_summary(m) for m in backups], "problems": catalog.problems,
                          "unreachable": catalog.unreachable}, indent=2))
    else:
        print(f"{'backup id':40} {'kind':8} {'finished (UTC)':20} {'size':>12} {'stored':>12}  locations")
        for m in backups:
            print(f"{m.backup_id:40} {m.kind:8} {m.finished_at:%Y-%m-%d %H:%M:%S}  {m.plaintext_bytes:>12,} "
                  f"{m.stored_bytes:>12,}  {','.join(sorted(m.locations))}")
        for problem in catalog.problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        for problem in catalog.unreachable:
            print(f"UNREACHABLE: {problem}", file=sys.stderr)
    if catalog.problems:
        return EXIT_INTEGRITY
    return EXIT_UNREACHABLE if catalog.unreachable else EXIT_OK


def cmd_backups_show(args: argparse.Namespace) -> int:
    ctx = _context(args)
    manifest, location = ctx.catalog.get(args.backup_id, location=args.location)
    document = manifest.model_dump(mode="json")
    document["key"] = {"kek_id": manifest.key["kek_id"], "alg": manifest.key["alg"], "wrapped": "(wrapped data key)"}
    document["read_from"] = location
    print(json.dumps(document, indent=2, sort_keys=True))
    return EXIT_OK


def cmd_backups_verify(args: argparse.Namespace) -> int:
    from continuity.backup import record_verification, verify_copy

    ctx = _context(args)
    manifest, _ = ctx.catalog.get(args.backup_id, location=args.location)
    names = [args.location] if args.location else list(ctx.locations)
    results = []
    for name in names:
        location = ctx.locations[name]
        try:
            copy, _ = ctx.catalog.get(args.backup_id, location=name)
        except StorageError as exc:
            results.append({"location": name, "ok": False, "reason": str(exc)})
            continue
        verification = verify_copy(copy, location, ctx.keyring, deep=args.deep)
        record_verification(copy, location, ctx.keyring, verification)
        results.append({"location": name, "ok": verification.ok, "depth": verification.depth,
                        "reason": verification.reason})
    if args.json:
        print(json.dumps({"backup_id": manifest.backup_id, "results": results}, indent=2))
    else:
        for r in results:
            print(f"{'ok    ' if r['ok'] else 'FAILED'} {r['location']:10} {r['reason']}")
    return EXIT_OK if all(r["ok"] for r in results) else EXIT_INTEGRITY


def cmd_restore(args: argparse.Namespace) -> int:
    from continuity.backup import restore_copy, restore_to_path

    if args.to_cluster:
        return _restore_to_cluster(args)
    if args.backup_id is None:
        raise UsageError("a backup id is needed (only --to-cluster can choose one from --time or --lsn)")
    if args.time or args.lsn or args.port:
        raise UsageError("--time, --lsn and --port go with --to-cluster")
    ctx = _context(args)
    manifest, first = ctx.catalog.get(args.backup_id, location=args.location)
    order = [args.location or first] + [n for n in ctx.locations if n != (args.location or first)]
    report = lambda m: print(m, file=sys.stderr)  # noqa: E731
    if args.to_database:
        return _restore_to_database(ctx, manifest, order[0], args.to_database)
    if args.to == "-":
        restore_copy(manifest, ctx.locations[order[0]], ctx.keyring, sys.stdout.buffer, report=report)
        sys.stdout.buffer.flush()
        return EXIT_OK
    target = Path(args.to)
    if target.exists() and (not target.is_file() or target.stat().st_size > 0):
        raise UsageError(f"--to {target}: exists and is not empty; refusing to overwrite it")
    name, size = restore_to_path(manifest, [ctx.locations[n] for n in order], ctx.keyring, target, report=report)
    print(f"restored backup {manifest.backup_id} from location {name}: {size:,} bytes to {target}", file=sys.stderr)
    return EXIT_OK


def _restore_to_database(ctx, manifest, location: str, dsn: str) -> int:
    from continuity.restore import RestoreRefused, restore_into_database

    try:
        restore_into_database(manifest, ctx.locations[location], ctx.keyring, dsn)
    except RestoreRefused as exc:
        raise UsageError(f"--to-database: {exc}") from None
    counts = manifest.details.get("row_counts", {})
    print(f"restored {manifest.backup_id} from location {location}: {len(counts)} tables, "
          f"{sum(counts.values()):,} rows expected per the manifest", file=sys.stderr)
    return EXIT_OK


def _restore_to_cluster(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from continuity.localcluster import LocalCluster, ServiceUser, find_bindir, free_port
    from continuity.postgres import InvalidLsn, parse_lsn
    from continuity.restore import ScratchCluster, choose_base_backup, restore_physical

    target = Path(args.to_cluster).absolute()
    if target.exists() and any(target.iterdir()):
        raise UsageError(f"--to-cluster {target}: exists and is not empty; refusing to overwrite it")
    when = None
    if args.time:
        try:
            when = datetime.fromisoformat(args.time)
        except ValueError:
            raise UsageError(f"--time {args.time!r}: expected ISO 8601, e.g. 2026-11-26T03:15:00Z") from None
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if args.lsn:
        if when is not None:
            raise UsageError("--time and --lsn: give one recovery target, not both")
        try:
            parse_lsn(args.lsn)
        except InvalidLsn as exc:
            raise UsageError(f"--lsn: {exc}") from None
    user = ServiceUser.detect()
    target.parent.mkdir(parents=True, exist_ok=True)
    if user.is_other and subprocess.run(user.command(["test", "-w", str(target.parent), "-a", "-x", str(target.parent)]),
                                        check=False).returncode != 0:
        raise UsageError(f"--to-cluster {target}: the OS user {user.name!r}, which PostgreSQL runs as, cannot write "
                         f"in {target.parent}; choose a directory it can reach (e.g. under /var/lib/postgresql or /tmp)")
    ctx = _context(args)
    location = args.location or sorted(ctx.required)[0]
    base = ctx.catalog.get(args.backup_id, location=location)[0] if args.backup_id else \
        choose_base_backup(ctx.catalog, location, when, args.lsn)
    if base.kind != "physical":
        raise UsageError(f"backup {base.backup_id} is {base.kind}; --to-cluster takes a physical backup")
    work = user.make_dir(target.parent / f".{target.name}.continuity", 0o755)
    cluster = LocalCluster(name=target.name, data_dir=target, port=args.port or free_port(),
                           socket_dir=user.make_dir(work / "run", 0o755), log_file=work / "postgres.log",
                           user=user, bindir=find_bindir())
    restore_physical(catalog=ctx.catalog, location=location, scratch=ScratchCluster(root=work, cluster=cluster),
                     base=base, target_time=when, target_lsn=args.lsn, report=lambda m: print(m, file=sys.stderr))
    print(f"cluster {target} recovered from {base.backup_id} (location {location}) and running on port {cluster.port}; "
          f"connect: psql -h {cluster.socket_dir} -p {cluster.port} -U postgres; "
          f"stop: pg_ctl -D {target} stop")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    ctx = _context(args)
    catalog = ctx.catalog
    usage: dict[str, list[str]] = {}
    for manifest in catalog.list():
        usage.setdefault(manifest.key["kek_id"], []).append(manifest.backup_id)
    ids = sorted(set(ctx.keyring.keys) | set(usage) | {ctx.keyring.active})
    rows = [{"kek_id": i, "active": i == ctx.keyring.active, "in_keyring": i in ctx.keyring.keys or i.startswith("kms:"),
             "backups": len(usage.get(i, []))} for i in ids]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            flags = ("active" if r["active"] else "") + ("" if r["in_keyring"] else " MISSING from the keyring")
            print(f"{r['kek_id']:28} {r['backups']:>6} backups  {flags}")
    return EXIT_OK


def cmd_keys_new(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if ctx.keyring_file is None:
        raise UsageError("keys new writes a keyring file: pass --key-file (the keyring came from the environment)")
    updated = ctx.keyring.with_new_key(args.id)
    updated.save(ctx.keyring_file)
    if ctx.sandbox is not None:
        ctx.sandbox.write_connections()
    print(f"new KEK {updated.active} is active in {ctx.keyring_file}; run `continuity keys rotate` to re-wrap existing backups")
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from continuity.backup import rewrap

    ctx = _context(args)
    target = ctx.keyring.active
    catalog = ctx.catalog
    pending = 0
    for name, location in ctx.locations.items():
        for manifest in catalog.manifests_in(name):
            if manifest.key["kek_id"] == target:
                continue
            pending += 1
            if args.apply:
                rewrap(manifest, location, ctx.keyring, to_kek=target)
                print(f"re-wrapped {manifest.backup_id} in {name}: {manifest.key['kek_id']} -> {target}")
            else:
                print(f"would re-wrap {manifest.backup_id} in {name}: {manifest.key['kek_id']} -> {target}")
    for problem in catalog.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    verb = "re-wrapped" if args.apply else "to re-wrap (dry run; --apply to do it)"
    print(f"{pending} manifest copies {verb}; payloads untouched")
    return EXIT_INTEGRITY if catalog.problems else EXIT_OK


def cmd_keys_retire(args: argparse.Namespace) -> int:
    ctx = _context(args)
    if ctx.keyring_file is None:
        raise UsageError("keys retire edits a keyring file: pass --key-file")
    catalog = ctx.catalog
    blockers = sorted({f"{m.backup_id} ({name})" for name in ctx.locations for m in catalog.manifests_in(name)
                       if m.key["kek_id"] == args.kek_id})
    if catalog.problems:
        raise UsageError("cannot prove KEK is unused while some manifests are unreadable: " + "; ".join(catalog.problems))
    if blockers:
        print(f"KEK {args.kek_id} cannot be retired: {len(blockers)} kept backup copies still need it: "
              + ", ".join(blockers), file=sys.stderr)
        print("HINT: `continuity keys rotate --apply` re-wraps them under the active KEK", file=sys.stderr)
        return EXIT_FAILURE
    if not args.apply:
        print(f"KEK {args.kek_id} is used by no kept backup; `--apply` removes it from {ctx.keyring_file}")
        return EXIT_OK
    ctx.keyring.without(args.kek_id).save(ctx.keyring_file)
    if ctx.sandbox is not None:
        ctx.sandbox.write_connections()
    print(f"KEK {args.kek_id} retired from {ctx.keyring_file}")
    return EXIT_OK


class UsageError(Exception):
    """Bad input from the command line; nothing was changed."""


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

    def with_storage(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        with_root(p)
        p.add_argument("--key-file", help="keyring file (default: $CONTINUITY_KEYRING_FILE, $CONTINUITY_KEYRING, the sandbox's)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    backups = sub.add_parser("backups", help="backups in storage").add_subparsers(dest="action", required=True)
    create = with_storage(backups.add_parser("create", help="an ad-hoc backup of a file or stdin"))
    create.add_argument("--kind", default="adhoc", choices=BACKUP_KINDS)
    create.add_argument("--from", dest="source", required=True, help="FILE, or - for stdin")
    create.add_argument("--label")
    create.add_argument("--id", help="backup id (default: KIND-TIMESTAMP-RANDOM)")
    create.set_defaults(func=cmd_backups_create)
    listing = with_storage(backups.add_parser("list", help="backups, oldest first"))
    listing.add_argument("--kind")
    listing.add_argument("--location")
    listing.set_defaults(func=cmd_backups_list)
    show = with_storage(backups.add_parser("show", help="one backup's manifest"))
    show.add_argument("backup_id")
    show.add_argument("--location")
    show.set_defaults(func=cmd_backups_show)
    verify = with_storage(backups.add_parser("verify", help="check copies (shallow, or --deep: decrypt every chunk)"))
    verify.add_argument("backup_id")
    verify.add_argument("--deep", action="store_true")
    verify.add_argument("--location")
    verify.set_defaults(func=cmd_backups_verify)

    restore = with_storage(sub.add_parser("restore", help="restore a backup: its bytes, a database, or a cluster"))
    restore.add_argument("backup_id", nargs="?", help="the backup (physical restores may give --time instead)")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", help="PATH (must not exist or be empty), or - for stdout: the backup's bytes")
    target.add_argument("--to-database", metavar="DSN", help="an empty database: pg_restore a logical backup into it")
    target.add_argument("--to-cluster", metavar="DIR", help="a new data directory: base backup + WAL, recovered and started")
    restore.add_argument("--time", help="with --to-cluster: recover to this point in time (ISO 8601, UTC if no zone)")
    restore.add_argument("--lsn", help="with --to-cluster: recover to this WAL position (e.g. 0/3000060)")
    restore.add_argument("--port", type=int, help="with --to-cluster: port to start it on (default: a free one)")
    restore.add_argument("--location", help="read this location first")
    restore.set_defaults(func=cmd_restore)

    keys = sub.add_parser("keys", help="key-encryption keys").add_subparsers(dest="action", required=True)
    with_storage(keys.add_parser("list", help="KEKs and how many backups use each")).set_defaults(func=cmd_keys_list)
    new = with_storage(keys.add_parser("new", help="add a fresh KEK and make it active"))
    new.add_argument("--id")
    new.set_defaults(func=cmd_keys_new)
    rotate = with_storage(keys.add_parser("rotate", help="re-wrap every backup's data key under the active KEK"))
    rotate.add_argument("--apply", action="store_true", help="do it (default: dry run)")
    rotate.set_defaults(func=cmd_keys_rotate)
    retire = with_storage(keys.add_parser("retire", help="remove a KEK no kept backup needs"))
    retire.add_argument("kek_id")
    retire.add_argument("--apply", action="store_true")
    retire.set_defaults(func=cmd_keys_retire)

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
    import psycopg

    from continuity.dumps import DumpFailed
    from continuity.restore import RestoreError
    from continuity.sandbox import SandboxError

    try:
        return parsed.func(parsed)
    except PolicyError as exc:
        return _fail(str(exc), "fix the policy file; `continuity policy check` validates it", EXIT_POLICY)
    except UsageError as exc:
        return _fail(str(exc), None, EXIT_USAGE)
    except ArchiveError as exc:
        return _fail(str(exc), "another location may hold a good copy: `continuity backups verify ID --deep`", EXIT_INTEGRITY)
    except KeyringError as exc:
        return _fail(str(exc), "pass the keyring that holds that KEK with --key-file or $CONTINUITY_KEYRING_FILE", EXIT_MISSING_KEY)
    except StorageError as exc:
        return _fail(str(exc), "is the storage endpoint reachable and are the credentials right?", EXIT_UNREACHABLE)
    except (BotoCoreError, ClientError) as exc:
        return _fail(f"storage request failed: {exc}", "is the storage endpoint reachable and are the credentials right?", EXIT_UNREACHABLE)
    except psycopg.OperationalError as exc:
        return _fail(f"database connection failed: {str(exc).strip().splitlines()[0]}",
                     "is the database running and reachable, and is the password in PGPASSWORD or ~/.pgpass?",
                     EXIT_UNREACHABLE)
    except NodeUnreachable as exc:
        return _fail(str(exc), "is the node running? `continuity sandbox status` shows the sandbox", EXIT_UNREACHABLE)
    except (SandboxError, ClusterError, RestoreError, DumpFailed) as exc:
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
