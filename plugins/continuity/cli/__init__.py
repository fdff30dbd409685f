"""The `continuity` command: the policy, backups, restores and keys without Airflow (and, where the development
lab is installed, its `sandbox` and `run` commands).

Errors are one line on stderr with a `HINT:` where there is one; details go to the debug log
(`-v`). Exit codes are distinct per failure class so scripts can tell them apart.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from botocore.exceptions import BotoCoreError, ClientError

from continuity.storage.archive import ArchiveError
from continuity.cli.backups import (cmd_backups_catch_up, cmd_backups_create, cmd_backups_list, cmd_backups_show,
                                   cmd_backups_verify)
from continuity.cli.common import (EXIT_FAILURE, EXIT_INTEGRITY, EXIT_INTERRUPTED, EXIT_MISSING_KEY, EXIT_OK,
                                   EXIT_POLICY, EXIT_UNREACHABLE, EXIT_USAGE, UsageError, _fail)
from continuity.cli.keys import cmd_keys_list, cmd_keys_new, cmd_keys_retire, cmd_keys_rotate
from continuity.cli.objects import cmd_objects_restore, cmd_objects_verify
from continuity.cli.restore import cmd_restore
from continuity.cli.policy import cmd_policy_check
from continuity.cli.guard import add_guard_commands
from continuity.cli.wal import add_wal_commands
from continuity.storage.keys import KeyringError
from continuity.policy.kinds import BACKUP_KINDS
from continuity.postgres.cluster import ClusterError
from continuity.policy.model import PolicyError
from continuity.postgres.node import NodeUnreachable
from continuity.policy.registry import available, implementation
from continuity.storage.locations import StorageError

# Scripts and tests import the exit codes from here.
__all__ = ["EXIT_FAILURE", "EXIT_INTEGRITY", "EXIT_INTERRUPTED", "EXIT_MISSING_KEY", "EXIT_OK", "EXIT_POLICY",
           "EXIT_UNREACHABLE", "EXIT_USAGE", "UsageError", "build_parser", "main"]


log = logging.getLogger("continuity")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="continuity", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (debug level)")
    parser.add_argument("--policy", help="policy file (default: $CONTINUITY_POLICY or include/policy.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_root(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--root", help="sandbox directory (default: $CONTINUITY_SANDBOX or .sandbox)")
        return p

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
    catch_up = with_storage(backups.add_parser(
        "catch-up", help="copy every degraded backup into the required location it misses, once it answers"))
    catch_up.set_defaults(func=cmd_backups_catch_up)

    restore = with_storage(sub.add_parser("restore", help="restore a backup: its bytes, a database, a cluster, "
                                                          "or Airflow's configuration"))
    restore.add_argument("backup_id", nargs="?", help="the backup (physical restores may give --time instead)")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--to", help="PATH (must not exist or be empty), or - for stdout: the backup's bytes")
    target.add_argument("--to-database", metavar="DSN", help="an empty database: pg_restore a logical backup into it")
    target.add_argument("--to-cluster", metavar="DIR", help="a new data directory: base backup + WAL, recovered and started")
    target.add_argument("--to-airflow", metavar="AIRFLOW_HOME",
                        help="a config backup (default: the newest) into an Airflow whose metadata DB is migrated: "
                             "connections and variables imported, the policy and state files beside them")
    restore.add_argument("--time", help="with --to-cluster: recover to this point in time (ISO 8601, UTC if no zone)")
    restore.add_argument("--lsn", help="with --to-cluster: recover to this WAL position (e.g. 0/3000060)")
    restore.add_argument("--port", type=int, help="with --to-cluster: port to start it on (default: a free one)")
    restore.add_argument("--location", help="read this location first")
    restore.set_defaults(func=cmd_restore)

    objects = sub.add_parser("objects", help="the application's objects in the replicas").add_subparsers(
        dest="action", required=True)
    verify_objects = with_storage(objects.add_parser(
        "verify", help="per category: objects, versions, missing, different, lag (exit 5 when any is missing)"))
    verify_objects.add_argument("--category", help="one category (default: every one of the policy)")
    verify_objects.add_argument("--deep", type=int, default=0, metavar="N",
                                help="also download N random replica copies and check their SHA-256")
    verify_objects.set_defaults(func=cmd_objects_verify)
    restore_objects = with_storage(objects.add_parser(
        "restore", help="the objects as they were at a point in time, from the replica alone"))
    restore_objects.add_argument("--category", required=True)
    restore_objects.add_argument("--prefix", help="only keys under this prefix (default: the category's)")
    restore_objects.add_argument("--as-of", required=True, help="ISO 8601 time (UTC if no zone)")
    restore_objects.add_argument("--to", required=True, help="s3://BUCKET[/PREFIX] or an empty directory")
    restore_objects.add_argument("--replica-region", help="read the replica in this region (default: the first)")
    restore_objects.set_defaults(func=cmd_objects_restore)

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

    add_wal_commands(sub, with_storage)
    add_guard_commands(sub, with_storage)

    if available("commands", "lab"):
        # The development lab's commands (`sandbox`, `run`), where the lab is installed: found by name, so the
        # emergency CLI works on a machine that has only the product.
        implementation("commands", "lab", setting="the lab's commands")(sub, with_root=with_root)
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

    from continuity.backup.full import DumpFailed
    from continuity.restore.engine import RestoreError

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
    except (ClusterError, RestoreError, DumpFailed) as exc:
        return _fail(str(exc), None, EXIT_FAILURE)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED




if __name__ == "__main__":
    sys.exit(main())
