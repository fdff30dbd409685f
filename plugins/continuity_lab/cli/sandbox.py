"""`continuity sandbox ...` and `continuity policy check`."""

from __future__ import annotations

import argparse
import json
import sys

from continuity.cli.common import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, _fail
from continuity_lab.cli.common import _sandbox


def cmd_sandbox_up(args: argparse.Namespace) -> int:
    sandbox = _sandbox(args)
    sandbox.up(scale=args.scale, wal_pusher=args.wal_pusher, ssh=args.ssh)
    _print_status(sandbox.status(), as_json=False)
    print(f"\nIn another terminal: eval \"$(continuity sandbox env --root {sandbox.root})\"")
    if "ssh" in sandbox.state:
        print(f"Failover with node control over SSH (port {sandbox.state['ssh']['port']}): "
              f"export CONTINUITY_POLICY={sandbox.write_ssh_policy()}")
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

    from continuity_lab import sampledata

    sandbox = _sandbox(args)
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        counts = sampledata.generate(conn, scale=args.scale, seed=args.seed)
    for table, count in counts.items():
        print(f"{table:12} {count:>10,} rows")
    for category, count in sandbox.seed_objects(scale=args.scale).items():
        print(f"{category:12} {count:>10,} objects")
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
    for region, entry in (s3.get("gateways") or {}).items():
        print(f"s3 gateway {region} {entry['endpoint']} ({'running' if entry['running'] else 'stopped: region cut off'})")
    for region, entry in (status.get("redis") or {}).items():
        print(f"redis      {region} {entry['address']} {entry['role']} ({'running' if entry['running'] else 'stopped'})")
    for region, entry in (status.get("application") or {}).items():
        instances = ", ".join(f"{i['name']} {i.get('url', '')} {'running' if i['running'] else 'stopped'}".replace("  ", " ")
                              for i in entry["instances"])
        print(f"app        {region} ({entry['state']}): {instances}")
    pusher = status.get("wal_pusher") or {}
    if pusher:
        print(f"wal pusher {'running' if pusher['running'] else 'stopped'}: {pusher['queued']} files queued in "
              f"{pusher['spool']}")
    receivers = status.get("receivers") or {}
    if receivers:
        print(f"receivers  smtp {receivers['smtp']}, webhooks {receivers['webhooks']} "
              f"({'running' if receivers['running'] else 'stopped'}): mail in {receivers['mail_dir']}, requests in "
              f"{receivers['webhooks_dir']}")
    for bucket in status.get("application_buckets", []):
        print(f"  {bucket['category']:14} {bucket['role']:8} s3://{bucket['bucket']}/{bucket['prefix']} ({bucket['region']}"
              f"{', object lock' if bucket['object_lock'] else ''})")


def cmd_sandbox_app(args: argparse.Namespace) -> int:
    """One service-control action on a region's sample application, printed one line per thing done (what
    `application.service_control: ssh` runs on the sandbox's "application host" over its SSH server)."""
    from continuity_lab.controls import SandboxServiceControl

    sandbox = _sandbox(args)
    if args.region not in sandbox.policy.application.regions:
        return _fail(f"no application region {args.region!r}", f"regions: {', '.join(sandbox.policy.application.regions)}",
                     EXIT_USAGE)
    control = SandboxServiceControl(sandbox)
    action = args.app_action
    if action == "start":
        lines = control.start_region(args.region)
    elif action == "stop":
        lines = control.stop_region(args.region)
    elif action == "status":
        lines = [f"{name} {'running' if up else 'stopped'}" for name, up in control.running(args.region).items()]
    elif action == "promote-cache":
        lines = [control.promote_cache(args.region)]
    elif action == "follow-cache":
        upstream = next((region for region, redis in sandbox.state.get("redis", {}).items()
                         if redis.get("port") == args.upstream_port), None)
        if upstream is None or upstream == args.region:
            return _fail(f"follow-cache: no other region's Redis listens on port {args.upstream_port}",
                         f"ports: {({r: e.get('port') for r, e in sandbox.state.get('redis', {}).items()})}", EXIT_USAGE)
        lines = [control.follow_cache(args.region, upstream)]
    elif action == "verify-start":
        dsn = sys.stdin.readline().strip()  # on stdin: the DSN carries the restored database's password
        if not dsn:
            return _fail("verify-start reads the database DSN on stdin; got nothing", None, EXIT_USAGE)
        lines = [control.start_verification_instance(args.region, dsn=dsn)]
    else:
        if not args.url:
            return _fail("verify-stop needs --url", None, EXIT_USAGE)
        control.stop_verification_instance(args.url)
        lines = [f"verification instance {args.url} stopped"]
    for line in lines:
        print(line)
    return EXIT_OK
