"""Failover params and target choice: pure checks that run before anything touches a node."""

from __future__ import annotations

import pytest

from continuity.failover.records import PreflightFailed, validate_params
from continuity.postgres.node import lsn_to_int
from continuity.policy.loading import load_policy


@pytest.fixture(scope="module")
def policy():
    return load_policy()


def test_defaults_and_sizes(policy) -> None:
    params = validate_params({"target": "dr", "reason": "maintenance", "max_lag_bytes": "1MiB", "incident_id": ""},
                             policy)
    assert params.mode == "switchover" and params.max_lag_bytes == 2**20 and params.incident_id is None
    assert not params.force and not params.dry_run


@pytest.mark.parametrize(("raw", "message"), [
    ({"target": "dr", "reason": "x", "mode": "failback"},
     "preflight check 'param mode' failed: Input should be 'switchover' or 'failover' (got 'failback')"),
    ({"target": "dr", "reason": "x", "max_lag_bytes": "lots"}, "preflight check 'param max_lag_bytes' failed"),
    ({"target": "db9", "reason": "x"},
     "preflight check 'target is a known node' failed: target 'db9' is not a node of the policy (nodes: primary, sync1, sync2, dr)"),
    ({"target": "dr", "reason": ""}, "preflight check 'reason given' failed: a non-empty reason is required"),
    ({"target": "dr"}, "preflight check 'reason given' failed"),
])
def test_bad_params_name_the_check_and_change_nothing(policy, raw, message) -> None:
    with pytest.raises(PreflightFailed) as caught:
        validate_params(raw, policy)
    assert message in str(caught.value) and str(caught.value).endswith("Nothing was changed.")


def test_lsn_arithmetic() -> None:
    assert lsn_to_int("0/0") == 0 and lsn_to_int(None) == 0
    assert lsn_to_int("1/0") - lsn_to_int("0/FFFFFFFF") == 1
    assert lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848


def test_policy_with_primary_swaps_roles_only(policy) -> None:
    moved = policy.with_primary("dr")
    assert moved.topology.primary.name == "dr"
    assert {n.name for n in moved.topology.standbys} == {"primary", "sync1", "sync2"}
    assert moved.topology.primary_region == policy.topology.primary_region
    assert policy.with_primary("primary") is policy
    with pytest.raises(KeyError, match="no node named 'db9'"):
        policy.with_primary("db9")
