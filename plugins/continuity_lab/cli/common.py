"""What the lab's commands share."""

from __future__ import annotations

import argparse

from continuity.policy.loading import load_policy


def _sandbox(args: argparse.Namespace):
    from continuity_lab.sandbox import Sandbox

    return Sandbox(root=args.root, policy=load_policy(args.policy))
