"""`continuity restore`: a backup's bytes, a logical backup into a database, or a cluster to a point in time.

The restore logic itself lives in `continuity.restore.engine` and `continuity.backup.engine`; this module parses and reports."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from continuity.cli.common import EXIT_OK, UsageError, _context


def cmd_restore(args: argparse.Namespace) -> int:
    from continuity.backup.engine import restore_copy, restore_to_path

    if args.to_cluster:
        return _restore_to_cluster(args)
    if args.to_airflow:
        return _restore_to_airflow(args)
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


def _restore_to_airflow(args: argparse.Namespace) -> int:
    import io
    import os
    import shutil

    from continuity.backup.engine import restore_copy
    from continuity.backup.config import ConfigRestoreError, read_bundle, restore_into_airflow
    from continuity.policy.project import TOPOLOGY_KEY

    if args.time or args.lsn or args.port:
        raise UsageError("--time, --lsn and --port go with --to-cluster")
    home = Path(args.to_airflow).absolute()
    if not home.is_dir():
        raise UsageError(f"--to-airflow {home}: not a directory; HINT: create it and run `airflow db migrate` with "
                         f"AIRFLOW_HOME={home} first")
    airflow = shutil.which("airflow") or str(Path(sys.executable).with_name("airflow"))
    if not Path(airflow).exists():
        raise UsageError("--to-airflow: no `airflow` command on PATH or beside this Python")
    ctx = _context(args)
    location = args.location or sorted(ctx.required)[0]
    if args.backup_id:
        manifest, location = ctx.catalog.get(args.backup_id, location=args.location)
    else:
        manifest = ctx.catalog.latest("config", location=location)
        if manifest is None:
            raise UsageError(f"--to-airflow: location {location} holds no config backup")
    if manifest.kind != "config":
        raise UsageError(f"--to-airflow: {manifest.backup_id} is a backup of kind {manifest.kind}, not a config backup")
    report = lambda m: print(m, file=sys.stderr)  # noqa: E731
    data = io.BytesIO()  # a config bundle is kilobytes
    restore_copy(manifest, ctx.locations[location], ctx.keyring, data, report=report)
    topology = None  # who is primary now: storage's record, newer than any backup (none before a first failover)
    try:
        if ctx.locations[location].head(TOPOLOGY_KEY) is not None:
            topology = ctx.locations[location].get_bytes(TOPOLOGY_KEY).decode()
    except Exception as exc:  # the rebuild goes on; the DAGs follow the policy until a failover records one
        report(f"cannot read {ctx.locations[location].describe(TOPOLOGY_KEY)}: {exc}")
    try:
        restored = restore_into_airflow(read_bundle(data.getvalue(), where=f"config backup {manifest.backup_id}"),
                                        airflow=airflow, airflow_home=home, backup_id=manifest.backup_id,
                                        environ=os.environ, report=report, topology=topology)
    except ConfigRestoreError as exc:
        raise UsageError(str(exc)) from None
    print(f"restored config backup {manifest.backup_id} from location {location} into {home}: "
          f"{len(restored.connections)} connections, {len(restored.variables)} variables; the policy and state "
          f"files are in {restored.files}", file=sys.stderr)
    return EXIT_OK


def _restore_to_database(ctx, manifest, location: str, dsn: str) -> int:
    from continuity.restore.engine import RestoreRefused, restore_into_database

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

    from continuity.postgres.node import InvalidLsn, parse_lsn
    from continuity.restore.engine import RestoreRefused, choose_base_backup, restore_to_directory

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
    ctx = _context(args)
    location = args.location or sorted(ctx.required)[0]
    base = ctx.catalog.get(args.backup_id, location=location)[0] if args.backup_id else \
        choose_base_backup(ctx.catalog, location, when, args.lsn)
    try:
        cluster = restore_to_directory(catalog=ctx.catalog, location=location, target=target, base=base,
                                       target_time=when, target_lsn=args.lsn, port=args.port,
                                       report=lambda m: print(m, file=sys.stderr))
    except RestoreRefused as exc:
        raise UsageError(f"--to-cluster {target}: {exc}") from None
    print(f"cluster {target} recovered from {base.backup_id} (location {location}) and running on port {cluster.port}; "
          f"connect: psql -h {cluster.socket_dir} -p {cluster.port} -U postgres; "
          f"stop: pg_ctl -D {target} stop")
    return EXIT_OK
