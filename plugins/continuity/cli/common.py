"""What every command group shares: exit codes, the usage error, the context (policy, keyring, storage)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from continuity.policy.loading import load_policy
from continuity.policy.project import SANDBOX_ENV_VAR

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
    """The emergency context, composed here: the policy's storage and the keyring the flags or environment name;
    a sandbox's only when one is named."""
    from continuity.emergency import build_context
    from continuity.policy.registry import available, implementation

    policy = load_policy(args.policy)
    # A sandbox only when asked for (--root, or $CONTINUITY_SANDBOX from `continuity sandbox env`): an operator
    # restoring in a disaster on a machine with a stale .sandbox must reach the policy's storage, not the lab's.
    root = getattr(args, "root", None) or os.environ.get(SANDBOX_ENV_VAR)
    sandbox = None
    if root:
        where = f"--root {root}" if getattr(args, "root", None) else f"${SANDBOX_ENV_VAR} ({root})"
        if not available("local_deployment", "sandbox"):
            raise UsageError(f"{where} names a sandbox, but the development lab (continuity_lab) is not installed "
                             f"here; HINT: unset it and pass --key-file and the storage's credentials")
        sandbox = implementation("local_deployment", "sandbox", setting="the local deployment")(root=root, policy=policy)
        if not sandbox.exists:
            raise UsageError(f"{where}: no sandbox there (no state.json); HINT: `continuity sandbox up --root {root}`, "
                             f"or unset it to use the policy's storage with --key-file")
    return build_context(policy=policy, key_file=getattr(args, "key_file", None), sandbox=sandbox)


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
