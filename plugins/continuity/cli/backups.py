"""`continuity backups create | list | show | verify | catch-up`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from continuity.cli.common import (EXIT_INTEGRITY, EXIT_OK, EXIT_UNREACHABLE, UsageError, _context,
                                   _manifest_summary)
from continuity.storage.locations import StorageError


def cmd_backups_create(args: argparse.Namespace) -> int:
    from continuity.backup.engine import create_backup

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
    from continuity.backup.engine import record_verification, verify_copy

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


def cmd_backups_catch_up(args: argparse.Namespace) -> int:
    """Exit 0 when nothing is degraded any more; EXIT_UNREACHABLE while a location still misses backups."""
    from continuity.backup.catchup import catch_up

    ctx = _context(args)
    result = catch_up(ctx.locations, ctx.keyring, report=lambda m: print(m, file=sys.stderr))
    print(json.dumps(result.model_dump(mode="json"), indent=2) if args.json else result.summary())
    return EXIT_UNREACHABLE if result.degraded else EXIT_OK
