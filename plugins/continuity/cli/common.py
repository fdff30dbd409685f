"""What every command group shares: exit codes, the usage error, the context (policy, keyring, storage)."""

from __future__ import annotations

import argparse
import logging
import sys

from continuity.policy import load_policy

log = logging.getLogger("continuity")


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_POLICY = 3
EXIT_UNREACHABLE = 4
EXIT_INTEGRITY = 5
EXIT_MISSING_KEY = 6
EXIT_INTERRUPTED = 130


def _context(args: argparse.Namespace):
    """The emergency context, composed here: a sandbox on this machine, when there is one, fills in the flags."""
    from continuity.emergency import build_context
    from continuity.registry import available, implementation

    policy = load_policy(args.policy)
    sandbox = None
    if available("local_deployment", "sandbox"):
        sandbox = implementation("local_deployment", "sandbox", setting="the local deployment")(
            root=getattr(args, "root", None), policy=policy)
    return build_context(policy=policy, key_file=getattr(args, "key_file", None),
                         sandbox=sandbox if sandbox is not None and sandbox.exists else None)


def _manifest_summary(manifest) -> dict:
    return {
        "backup_id": manifest.backup_id, "kind": manifest.kind, "label": manifest.label,
        "finished_at": manifest.finished_at.isoformat(), "plaintext_bytes": manifest.plaintext_bytes,
        "stored_bytes": manifest.stored_bytes, "kek_id": manifest.key["kek_id"],
        "locations": sorted(manifest.locations),
    }


class UsageError(Exception):
    """Bad input from the command line; nothing was changed."""

def _fail(message: str, hint: str | None, code: int) -> int:
    log.debug("failure details", exc_info=True)
    print(f"continuity: error: {message}", file=sys.stderr)
    if hint and "HINT:" not in message:
        print(f"HINT: {hint}", file=sys.stderr)
    return code
