"""`continuity keys list | new | rotate | retire`."""

from __future__ import annotations

import argparse
import json
import sys

from continuity.cli.common import EXIT_FAILURE, EXIT_INTEGRITY, EXIT_OK, UsageError, _context


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
    from continuity.backup.engine import rewrap
    from continuity.storage.walindex import refresh_index

    ctx = _context(args)
    target = ctx.keyring.active
    catalog = ctx.catalog
    pending = 0
    for name, location in ctx.locations.items():
        for manifest in catalog.manifests_in(name, indexed=False):
            if manifest.key["kek_id"] == target:
                continue
            pending += 1
            if args.apply:
                rewrap(manifest, location, ctx.keyring, to_kek=target)
                print(f"re-wrapped {manifest.backup_id} in {name}: {manifest.key['kek_id']} -> {target}")
            else:
                print(f"would re-wrap {manifest.backup_id} in {name}: {manifest.key['kek_id']} -> {target}")
    if args.apply:
        for location in ctx.locations.values():
            # The index holds copies of the manifests just re-wrapped, and its packs' own keys: rewrite both.
            refresh_index(location, ctx.keyring, report=print)
    for problem in catalog.problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    verb = "re-wrapped" if args.apply else "to re-wrap (dry run; --apply to do it)"
    print(f"{pending} manifest copies {verb}; payloads untouched")
    return EXIT_INTEGRITY if catalog.problems else EXIT_OK


def cmd_keys_retire(args: argparse.Namespace) -> int:
    from continuity.storage.walindex import read_index

    ctx = _context(args)
    if ctx.keyring_file is None:
        raise UsageError("keys retire edits a keyring file: pass --key-file")
    catalog = ctx.catalog
    blockers = sorted({f"{m.backup_id} ({name})" for name in ctx.locations
                       for m in catalog.manifests_in(name, indexed=False) if m.key["kek_id"] == args.kek_id})
    for name, location in ctx.locations.items():
        index = read_index(location, ctx.keyring)
        blockers += [f"WAL index pack {p.key} ({name})" for p in index.packs if p.kek_id == args.kek_id]
        catalog.problems.extend(index.problems)
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
