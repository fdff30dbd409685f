"""Where the daily database integrity check reads: never the primary while a standby can serve."""

from __future__ import annotations

from continuity.policy.loading import load_policy
from continuity.postgres.integrity import integrity_node

POLICY = load_policy()


def test_the_check_reads_a_dr_region_standby_and_follows_the_topology_after_a_failover() -> None:
    assert integrity_node(POLICY) == "dr"
    assert integrity_node(POLICY.with_primary("dr")) == "primary", "dr is the primary now: the first standby"
