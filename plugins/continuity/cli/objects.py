"""`continuity objects verify | restore`: the application's objects in the replicas, without Airflow."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from continuity.cli.common import EXIT_FAILURE, EXIT_INTEGRITY, EXIT_OK, UsageError, _context


def _replicator(ctx, category: str):
    from continuity.objects.replication import replicator_for

    state = {name: ctx.locations[name] for name in sorted(ctx.required) if name in ctx.locations}
    try:
        return replicator_for(ctx.policy, category, state=state, report=lambda m: print(m, file=sys.stderr),
                              client_for=lambda _conn_id, region: ctx.s3_client(region))
    except ValueError as exc:
        raise UsageError(f"--category: {exc}") from None


def _categories(ctx, chosen: str | None) -> list[str]:
    if ctx.policy.objects is None:
        raise UsageError("the policy has no objects section: nothing to verify or restore")
    return [chosen] if chosen else sorted(ctx.policy.objects.categories)


def cmd_objects_verify(args: argparse.Namespace) -> int:
    from continuity.objects.audit import inventory

    ctx = _context(args)
    found = []
    for category in _categories(ctx, args.category):
        found += inventory(_replicator(ctx, category), deep_sample=args.deep, seed=datetime.now(timezone.utc).isoformat())
    if args.json:
        print(json.dumps([f.model_dump(mode="json") for f in found], indent=2))
    else:
        print(f"{'category':14} {'replica':40} {'objects':>8} {'versions':>9} {'missing':>8} {'different':>9} "
              f"{'lag':>10}")
        for f in found:
            lag = "not measured" if f.lag_seconds is None else f"{f.lag_seconds:.0f}s"
            objects_ = "?" if f.source_objects is None else f.source_objects
            versions = "?" if f.source_versions is None else f.source_versions
            print(f"{f.category:14} {f.replica:40} {objects_:>8} {versions:>9} {len(f.missing):>8} "
                  f"{len(f.different):>9} {lag:>10}")
            for line in [*f.missing[:10], *f.different[:10]]:
                print(f"    {line}")
            if f.source_error:
                print(f"    {f.source_error}: the replica alone was read")
    return EXIT_INTEGRITY if any(f.missing or f.different for f in found) else EXIT_OK


def _as_of(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--as-of {text!r}: expected an ISO 8601 time such as 2026-11-27T08:15:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def cmd_objects_restore(args: argparse.Namespace) -> int:
    from continuity.objects.restore import restore_as_of
    from continuity.objects.store import ObjectStore

    as_of = _as_of(args.as_of)
    ctx = _context(args)
    [category] = _categories(ctx, args.category)
    replicator = _replicator(ctx, category)
    replicas = list(replicator.replicas.values())
    if args.replica_region:
        replicas = [r for r in replicas if r.region == args.replica_region]
        if not replicas:
            raise UsageError(f"--replica-region {args.replica_region}: no replica of {category} there")
    replica = replicas[0]
    prefix = args.prefix if args.prefix is not None else replicator.source.prefix
    if args.to.startswith("s3://"):
        bucket, _, target_prefix = args.to[len("s3://"):].partition("/")
        if bucket in {r.bucket for r in replicator.replicas.values()}:
            raise UsageError(f"--to {args.to}: that is a replica; restore into the source or another bucket")
        region = ctx.s3_client(replica.region).get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
        target = ObjectStore(client=ctx.s3_client(region), bucket=bucket, prefix=target_prefix, region=region)
    else:
        target = Path(args.to)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UsageError(f"--to {target}: exists and is not an empty directory; refusing to overwrite it")
    result = restore_as_of(replica, category, as_of=as_of, prefix=prefix, target=target,
                           part_size=ctx.policy.objects.part_size, report=lambda m: print(m, file=sys.stderr))
    if args.json:
        print(result.model_dump_json(indent=2))
    else:
        print(f"restored {result.restored} objects of {category} as of {as_of.isoformat()} "
              f"({result.restored_bytes:,} bytes) from {result.replica} to {result.target}; {len(result.failed)} failed")
    if result.failed:
        return EXIT_INTEGRITY if any("SHA-256" in f for f in result.failed) else EXIT_FAILURE
    return EXIT_OK
