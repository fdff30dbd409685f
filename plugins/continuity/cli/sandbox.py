"""`continuity sandbox ...` and `continuity policy check`."""

from __future__ import annotations

import argparse
import json
import sys

from continuity.cli.common import EXIT_OK, EXIT_UNREACHABLE, _sandbox
from continuity.policy import load_policy


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

    from continuity import sampledata

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


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    functions = len(policy.business_functions)
    print(
        f"policy OK: {functions} business functions, {len(policy.tiers)} tiers, "
        f"{len(policy.data_categories)} data categories, {len(policy.topology.nodes)} nodes, "
        f"{len(policy.storage.locations)} storage locations, "
        f"{len(policy.objects.categories) if policy.objects else 0} object categories"
    )
    return EXIT_OK
