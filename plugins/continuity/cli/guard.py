"""`continuity guard run`: the self-fencing guard beside a region's nodes (continuity.failover.guard)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from continuity.cli.common import EXIT_OK, UsageError, _context


def local_fence(pgdata: Path, *, pg_ctl: str) -> Callable[[str], None]:
    """Stop the node whose data directory is `pgdata` on this host, so that it can only come back as a standby."""

    def fence(name: str) -> None:
        # standby.signal first: should the stop fail half-way, a restart still comes back read-only.
        (pgdata / "standby.signal").touch()
        result = subprocess.run([pg_ctl, "stop", "-D", str(pgdata), "-m", "immediate", "-w"], capture_output=True,
                                text=True, timeout=60, check=False)
        if result.returncode != 0 and "Is server running?" not in result.stderr:
            raise RuntimeError(f"pg_ctl stop of {name} failed: {result.stderr.strip()}")

    return fence


def cmd_guard_run(args: argparse.Namespace) -> int:
    from continuity.failover.guard import NoticeBoard, PrimaryGuard, remote_standbys_of
    from continuity.failover.nodecontrol import node_control_for
    from continuity.postgres.node import PostgresNode

    ctx = _context(args)
    settings = ctx.policy.failover.primary_guard
    if settings is None:
        raise UsageError("the policy has no failover.primary_guard (ttl, poll): nothing tells the guard how long a "
                         "primary may go without reading storage; set it, and dr_failover waits for the guard")
    topology = ctx.policy.topology.nodes
    regions = sorted({node.region for node in topology})
    if args.region not in regions:
        raise UsageError(f"--region: expected one of {regions} (the policy's topology), got {args.region!r}")
    names = [node.name for node in topology if node.region == args.region]
    if ctx.sandbox is not None:
        nodes = {name: ctx.sandbox.node(name) for name in names}
        control = node_control_for(ctx.policy)

        def fence(name: str) -> None:
            control.stop(name, mode="immediate")
            control.fence(name)
    else:
        if not (args.node and args.conninfo and args.pgdata):
            raise UsageError("outside the sandbox the guard runs beside one node: pass --node, --conninfo (no "
                             "password: PGPASSWORD or ~/.pgpass) and --pgdata")
        if args.node not in names:
            raise UsageError(f"--node: {args.node!r} is not a node of region {args.region} in the policy "
                             f"(its nodes there: {', '.join(names)})")
        if not Path(args.pgdata, "PG_VERSION").is_file():
            raise UsageError(f"--pgdata: {args.pgdata} is not a PostgreSQL data directory (no PG_VERSION)")
        nodes = {args.node: PostgresNode(name=args.node, conninfo=args.conninfo)}
        fence = local_fence(Path(args.pgdata), pg_ctl=args.pg_ctl)
    ttl, poll = settings.ttl.total_seconds(), settings.poll.total_seconds()
    board = NoticeBoard(list(ctx.locations.values()), timeout=max(poll, 2.0))
    report = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    guard = PrimaryGuard(nodes=nodes, remote_standbys=remote_standbys_of(topology), board=board, fence=fence,
                         ttl=ttl, report=report)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    report(f"guarding {', '.join(nodes)} in {args.region}: a deposed primary, or one that has not read a majority "
           f"({board.quorum} of {len(board.locations)}) of the storage locations for {ttl:g}s while a standby in "
           f"another region does not stream from it, is stopped; every {poll:g}s")
    try:
        guard.run(poll=poll, stop=stop)
    finally:
        board.close()
    report("stopped")
    return EXIT_OK


def add_guard_commands(sub, with_storage) -> None:
    guard = sub.add_parser("guard", help="the self-fencing guard beside a region's nodes").add_subparsers(
        dest="action", required=True)
    run = with_storage(guard.add_parser("run", help="guard the region's nodes until stopped"))
    run.add_argument("--region", required=True, help="the region whose nodes this host runs")
    run.add_argument("--node", help="outside the sandbox: the one node beside this guard")
    run.add_argument("--conninfo", help="outside the sandbox: how to reach it (no password)")
    run.add_argument("--pgdata", help="outside the sandbox: its data directory (the guard stops it with pg_ctl)")
    run.add_argument("--pg-ctl", default="pg_ctl", help="pg_ctl to stop it with (default: pg_ctl on PATH)")
    run.set_defaults(func=cmd_guard_run)
