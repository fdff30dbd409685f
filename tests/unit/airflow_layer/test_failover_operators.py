"""dr_failover's operators, provider-style: the preflight's checks with the hook replaced."""

from __future__ import annotations

import pytest

from continuity.policy.loading import load_policy


def test_preflight_names_the_missing_node_control_as_its_failed_check() -> None:
    """dr_failover's preflight turns a cluster that cannot be built (no node control) into its named check."""
    from continuity.failover.nodecontrol import NodeControlError
    from continuity.failover.records import PreflightFailed
    from continuity.operators.failover import _check

    class NoControl:
        policy = load_policy()

        def get_cluster(self, *, report):
            raise NodeControlError("no node control is configured: set topology.node_control in the policy")

    with pytest.raises(PreflightFailed, match="preflight check 'node control configured' failed: no node control is "
                                              "configured: set topology.node_control in the policy"):
        _check(NoControl(), {"params": {"target": "dr", "reason": "unit"}, "run_id": "manual__1"}, print)
