"""`continuity wal push | fetch | pusher`: PostgreSQL's archive_command and restore_command, and the
asynchronous pusher that sends the spool archive-wal.sh queues, without Airflow."""

from __future__ import annotations

import argparse
import pwd
import signal
import sys
import threading
from pathlib import Path

from continuity.cli.common import EXIT_FAILURE, EXIT_INTEGRITY, EXIT_OK, UsageError, _context


def _wal_file(path: Path, name: str | None):
    from continuity.backup.wal import classify

    wal = classify(name or path.name)
    if wal is None:
        raise UsageError(f"{name or path.name!r} is not a WAL file name (segment, .history, .backup or .partial); "
                         f"pass --name when the file is stored under another name")
    return wal


def cmd_wal_push(args: argparse.Namespace) -> int:
    """archive_command = 'continuity wal push %p': success only once every required location holds a verified
    copy; the same file stored already is success, another file under its name an alarm."""
    from continuity.backup.wal import WalConflict, push_file

    path = Path(args.path)
    if not path.is_file():
        raise UsageError(f"{path}: no such file (archive_command passes %p, relative to the data directory)")
    wal = _wal_file(path, args.name)
    ctx = _context(args)
    try:
        manifest, was_there = push_file(path, wal, keyring=ctx.keyring, locations=ctx.locations,
                                        required=ctx.required, report=lambda m: print(m, file=sys.stderr))
    except WalConflict as exc:
        print(f"continuity: ALARM: {exc}", file=sys.stderr)
        return EXIT_INTEGRITY
    if args.verbose or not was_there:
        print(f"{wal.name}: {'already stored' if was_there else 'stored'} in {', '.join(sorted(manifest.locations))}",
              file=sys.stderr)
    return EXIT_OK


def cmd_wal_fetch(args: argparse.Namespace) -> int:
    """restore_command = 'continuity wal fetch %f %p': exit 1 (quietly, PostgreSQL asks past the archive's end)
    when no location holds the file."""
    from continuity.backup.wal import WalNotArchived, fetch_file

    ctx = _context(args)
    order = list(ctx.locations)
    if args.location:
        if args.location not in ctx.locations:
            raise UsageError(f"--location: expected one of {sorted(ctx.locations)}, got {args.location!r}")
        order.remove(args.location)
        order.insert(0, args.location)
    destination = Path(args.destination)
    if not destination.parent.is_dir():
        raise UsageError(f"{destination.parent}: no such directory (restore_command passes %p)")
    try:
        location, size = fetch_file(args.name, destination, keyring=ctx.keyring,
                                    locations={name: ctx.locations[name] for name in order})
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except WalNotArchived as exc:
        if args.verbose:
            print(f"continuity: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if args.verbose:
        print(f"{args.name}: {size} bytes from {location}", file=sys.stderr)
    return EXIT_OK


def cmd_wal_pusher(args: argparse.Namespace) -> int:
    """Runs until SIGTERM or SIGINT: the spool is sent as archive-wal.sh queues into it."""
    from continuity.backup.wal import push_continuously, serve_fetches

    spool = Path(args.spool)
    if not spool.is_dir():
        raise UsageError(f"--spool: {spool} is not a directory")
    ctx = _context(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    report = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    server = None
    if args.socket:
        owner = socket_owner(args.socket_owner) if args.socket_owner else None
        # Required locations first: the copies the policy vouches for.
        order = sorted(ctx.locations, key=lambda name: (name not in ctx.required, name))
        server = serve_fetches(Path(args.socket), keyring=ctx.keyring, report=report, owner=owner,
                               locations={name: ctx.locations[name] for name in order})
        report(f"serving WAL fetches on {args.socket} (restore_command: fetch-wal.sh)")
    print(f"pushing {spool} to {', '.join(sorted(ctx.locations))} (required: {', '.join(sorted(ctx.required))}) "
          f"every {args.interval:g}s, {args.workers} at once", file=sys.stderr, flush=True)
    try:
        push_continuously(spool, keyring=ctx.keyring, locations=ctx.locations, required=ctx.required, stop=stop,
                          interval=args.interval, workers=args.workers, report=report)
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            Path(args.socket).unlink(missing_ok=True)
    print("stopped", file=sys.stderr, flush=True)
    return EXIT_OK


def socket_owner(value: str) -> tuple[int, int]:
    """`--socket-owner`: an OS user's name, or UID:GID (the database's user in another container, which has
    no such name here)."""
    uid, colon, gid = value.partition(":")
    if colon:
        if not (uid.isdigit() and gid.isdigit()):
            raise UsageError(f"--socket-owner: expected a user name or UID:GID, got {value!r}")
        return int(uid), int(gid)
    try:
        entry = pwd.getpwnam(value)
    except KeyError:
        raise UsageError(f"--socket-owner: no OS user {value!r}") from None
    return entry.pw_uid, entry.pw_gid


def add_wal_commands(sub, with_storage) -> None:
    wal = sub.add_parser("wal", help="WAL archiving: archive_command, restore_command, the pusher").add_subparsers(
        dest="action", required=True)
    push = with_storage(wal.add_parser("push", help="archive_command: store one WAL file in every location"))
    push.add_argument("path", help="the file (%%p)")
    push.add_argument("--name", help="its WAL name when the file is named otherwise")
    push.set_defaults(func=cmd_wal_push)
    fetch = with_storage(wal.add_parser("fetch", help="restore_command: one archived WAL file (exit 1: not archived)"))
    fetch.add_argument("name", help="the WAL file name (%%f)")
    fetch.add_argument("destination", help="where PostgreSQL wants it (%%p)")
    fetch.add_argument("--location", help="read this location first")
    fetch.set_defaults(func=cmd_wal_fetch)
    pusher = with_storage(wal.add_parser("pusher", help="send the spool archive-wal.sh queues, until stopped"))
    pusher.add_argument("--spool", required=True, help="the spool directory archive_command queues into")
    pusher.add_argument("--interval", type=float, default=1.0, help="seconds between looks at the spool")
    pusher.add_argument("--workers", type=int, default=2, help="files sent at once")
    pusher.add_argument("--socket", help="also serve restore_command's fetches on this UNIX socket "
                                         "(include/scripts/fetch-wal.sh)")
    pusher.add_argument("--socket-owner", help="the OS user PostgreSQL runs as (a name, or UID:GID): the only one who "
                                               "may use the socket")
    pusher.set_defaults(func=cmd_wal_pusher)
