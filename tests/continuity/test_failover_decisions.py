"""Failover decisions on fakes (fast tier): preflight's refusals, the fence's refusal to make two
primaries, and rollback's rule of never going back once the application was repointed."""

from __future__ import annotations

import pytest

from continuity import failover
from continuity.policy import load_policy
from continuity.router import Endpoint
from tests.fakes import FakeNode, FakeNodeControl, FakeRouter

POLICY = load_policy()


def _cluster(**states: dict) -> tuple[failover.ReplicationGroup, FakeNodeControl, FakeRouter]:
    nodes = {name: FakeNode(name=name, **states.get(name, {})) for name in ("primary", "sync1", "dr")}
    nodes["primary"].writable = states.get("primary", {}).get("writable", True)
    endpoints = {name: Endpoint(node=name, host="127.0.0.1", port=5432 + i) for i, name in enumerate(nodes)}
    control = FakeNodeControl(nodes)
    router = FakeRouter(routes_to=endpoints["primary"])
    cluster = failover.ReplicationGroup(policy=POLICY, nodes=nodes, endpoints=endpoints, control=control,  # type: ignore[arg-type]
                               router=router, app_conninfo="(fake)", report=lambda _m: None)
    return cluster, control, router


def _params(**kwargs) -> failover.FailoverParams:
    return failover.FailoverParams(**{"target": "dr", "reason": "fast tier", **kwargs})


def test_preflight_refuses_two_writable_nodes_before_anything_else() -> None:
    cluster, control, router = _cluster(sync1={"writable": True})
    with pytest.raises(failover.PreflightFailed, match="'at most one writable node' failed: primary and sync1"):
        failover.preflight(cluster, _params(), primary="primary")
    assert control.actions == [] and router.actions == []


def test_preflight_refuses_a_recorded_primary_that_is_not_the_writable_one() -> None:
    cluster, _, _ = _cluster()
    with pytest.raises(failover.PreflightFailed,
                       match="the recorded topology names sync1 as primary but primary is the writable node"):
        failover.preflight(cluster, _params(mode="failover"), primary="sync1")


def test_a_healthy_switchover_plan_names_every_step() -> None:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    assert plan.action == "switchover" and plan.lag_bytes == 0
    assert [c.check for c in plan.checks][:2] == ["at most one writable node", "topology matches the cluster"]
    assert failover.FailoverPlan.model_validate(plan.model_dump(mode="json")) == plan, "the XCom contract round-trips"


def test_failover_refuses_to_promote_while_the_old_primary_writes_and_cannot_be_fenced() -> None:
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    control.unreachable_hosts.add("primary")
    with pytest.raises(failover.FailoverError, match="refusing to promote dr: primary still accepts writes"):
        failover.fence(cluster, plan)
    assert router.paused is False, "the entry point is resumed: the primary keeps serving"
    forced = plan.model_copy(update={"params": plan.params.model_copy(update={"force": True})})
    record = failover.fence(cluster, forced)
    assert record.forced_with_writable_old_primary is True and record.old_primary_fenced is False


def test_rollback_after_the_repoint_fails_forward() -> None:
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    cluster.nodes["primary"].writable, cluster.nodes["dr"].writable = False, True  # promoted, then repointed
    router.point_to(cluster.endpoints["dr"])
    result = failover.rollback(cluster, plan, fenced=True, promoted=True, repointed=True, failed_step="validate")
    assert result.failed_forward is True and result.rolled_back is False
    assert result.writable == ["dr"] and router.routes_to.node == "dr"
    assert "validate failed after the application was repointed to dr" in result.message
    assert not [a for a in control.actions if a.startswith(("unfence", "start"))], "nothing goes back"


def test_rollback_after_the_repoint_fences_a_second_writer() -> None:
    cluster, control, _ = _cluster()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    cluster.nodes["dr"].writable = True  # promoted while the old primary still writes
    result = failover.rollback(cluster, plan, fenced=True, promoted=True, repointed=True, failed_step="rejoin")
    assert result.writable == ["dr"]
    assert "stop(immediate) primary" in control.actions and "fence primary" in control.actions


def test_a_rerun_fence_after_promotion_does_nothing() -> None:
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    cluster.nodes["primary"].writable, cluster.nodes["dr"].writable = False, True
    assert failover.fence(cluster, plan).already_done is True
    assert control.actions == [] and router.actions == []
