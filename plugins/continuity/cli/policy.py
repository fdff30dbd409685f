"""`continuity policy check`: the policy file validated, and what it holds in one line."""

from __future__ import annotations

import argparse

from continuity.cli.common import EXIT_OK
from continuity.policy.loading import load_policy


def cmd_policy_check(args: argparse.Namespace) -> int:
    policy = load_policy(args.policy)
    functions = len(policy.business_functions)
    print(
        f"policy OK: {functions} business functions, {len(policy.tiers)} tiers, "
        f"{len(policy.data_categories)} data categories, {len(policy.topology.nodes)} nodes, "
        f"{len(policy.storage.locations)} storage locations, "
        f"{len(policy.objects.categories) if policy.objects else 0} object categories"
    )
    return EXIT_OK
