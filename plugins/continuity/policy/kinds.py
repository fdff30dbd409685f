"""The kinds of backup, in one place: manifests, the policy, validation and the CLI name them from here."""

from __future__ import annotations

from typing import Literal, get_args

# What a policy's data category can be proven by (its `backup_kinds`).
ProvingKind = Literal["logical", "physical", "wal", "config", "objects"]
# Every kind a manifest may carry: the proving kinds plus hand-made (`continuity backups create`) ones.
Kind = Literal["logical", "physical", "wal", "config", "objects", "adhoc"]
BACKUP_KINDS: tuple[str, ...] = get_args(Kind)
# Kinds of which retention always keeps the newest `backups.full.keep_last`.
KEPT_NEWEST_KINDS: tuple[str, ...] = ("logical", "physical", "config")
