"""AutoFailoverOperator, provider-style: `op.execute(context)` with the Variable store, the node hooks and
the trigger replaced, so each decision of the flap protection is checked in milliseconds."""

from __future__ import annotations

import json
from typing import Any

import pytest
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk.exceptions import AirflowSkipException

from continuity.operators import auto_failover
from continuity.policy.loading import load_policy
from tests.fakes import FakeNode

DISASTER = {"disaster": True, "summary": "score 5 >= 4",
            "failing": [{"component": "database", "subject": "primary primary"}]}
STANDBY_DOWN = {"disaster": True, "summary": "score 4 >= 4",
                "failing": [{"component": "network", "subject": "standby sync1"},
                            {"component": "storage", "subject": "bucket continuity-backups-us-west-2"}]}
HEALTHY = {"disaster": False, "summary": "score 0", "failing": []}


class FakeTaskInstance:
    def __init__(self, assessment: dict[str, Any] | None) -> None:
        self.assessment = assessment

    def xcom_pull(self, *, task_ids: str, key: str = "return_value") -> Any:
        assert (task_ids, key) == ("assess_health", "assessment")
        return self.assessment


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Variables in a dict, nodes as fakes, the trigger recorded instead of sent; the policy with auto_failover on."""
    policy = load_policy()
    policy = policy.model_copy(update={"health_monitor": policy.health_monitor.model_copy(update={"auto_failover": True})})
    state: dict[str, Any] = {"variables": {}, "triggered": [], "policy": policy,
                             "nodes": {"sync1": FakeNode(name="sync1", receiver_status="stopped"),
                                       "sync2": FakeNode(name="sync2", receiver_status="stopped"),
                                       "dr": FakeNode(name="dr", receiver_status="stopped")}}

    class Variables:
        @staticmethod
        def get(key: str, default: Any = None) -> Any:
            return state["variables"].get(key, default)

        @staticmethod
        def set(key: str, value: Any, **_: Any) -> None:
            state["variables"][key] = value

    class NodeHooks:
        def __init__(self, *, postgres_conn_id: str, node_name: str) -> None:
            self.node_name = node_name

        def get_node(self) -> FakeNode:
            return state["nodes"][self.node_name]

    def trigger(self: TriggerDagRunOperator, context: Any) -> None:
        state["triggered"].append(dict(self.conf))

    monkeypatch.setattr(auto_failover, "Variable", Variables)
    monkeypatch.setattr(auto_failover, "PostgresNodeHook", NodeHooks)
    monkeypatch.setattr(auto_failover.ContinuityPolicyHook, "policy", property(lambda _hook: state["policy"]))
    monkeypatch.setattr(TriggerDagRunOperator, "execute", trigger)
    return state


def _check(assessment: dict[str, Any] | None, run: int) -> str:
    op = auto_failover.AutoFailoverOperator(task_id="auto_failover")
    try:
        op.execute({"ti": FakeTaskInstance(assessment), "run_id": f"scheduled__{run}"})
    except AirflowSkipException as skipped:
        return str(skipped)
    return "triggered"


def _streak(world: dict[str, Any]) -> dict[str, Any]:
    return json.loads(world["variables"][auto_failover.STREAK_VARIABLE])


def test_three_disasters_in_a_row_trigger_one_failover_to_the_dr_standby(world: dict[str, Any]) -> None:
    assert "waits for 3 (flap protection)" in _check(DISASTER, 1)
    assert "reached 2 time(s) in a row" in _check(DISASTER, 2)
    assert _streak(world) == {"count": 2, "last_run": "scheduled__2", "since": "scheduled__1"}
    assert world["triggered"] == []
    assert _check(DISASTER, 3) == "triggered"
    [conf] = world["triggered"]
    assert conf["target"] == "dr" and conf["mode"] == "failover" and conf["force"] is False
    assert conf["reason"].startswith("automatic: disaster threshold held for 3 consecutive checks")
    assert _streak(world) == {"count": 0, "triggered_by": "scheduled__3"}, "reset, so one failover per streak"


def test_a_healthy_check_ends_the_streak(world: dict[str, Any]) -> None:
    _check(DISASTER, 1)
    _check(DISASTER, 2)
    assert _check(HEALTHY, 3) == "no disaster: nothing to do"
    assert _streak(world) == {"count": 0}
    assert "reached 1 time(s)" in _check(DISASTER, 4)


def test_a_disaster_without_the_primary_failing_alerts_and_never_promotes(world: dict[str, Any]) -> None:
    for run in range(1, 5):
        assert "disaster alert without promotion" in _check(STANDBY_DOWN, run)
    assert world["triggered"] == [] and _streak(world) == {"count": 0}


def test_a_standby_still_hearing_the_primary_vetoes_the_failover(world: dict[str, Any]) -> None:
    world["nodes"]["sync1"].receiver_status = "streaming"  # sync1 still streams from the primary
    for run in (1, 2):
        _check(DISASTER, run)
    skipped = _check(DISASTER, 3)
    assert skipped.startswith("no automatic failover: standby sync1 still streams from the primary")
    assert world["triggered"] == [] and _streak(world) == {"count": 0}


def test_no_healthy_dr_standby_keeps_the_streak_and_says_so(world: dict[str, Any]) -> None:
    world["nodes"]["dr"].reachable = False
    for run in (1, 2):
        _check(DISASTER, run)
    assert "no healthy standby in the DR region us-west-2" in _check(DISASTER, 3)
    assert world["triggered"] == [] and _streak(world)["count"] == 3


def test_off_by_policy_or_without_an_assessment_nothing_is_decided(world: dict[str, Any]) -> None:
    assert "did not report" in _check(None, 1)
    policy = world["policy"]
    world["policy"] = policy.model_copy(update={"health_monitor": policy.health_monitor.model_copy(
        update={"auto_failover": False})})
    assert "automatic failover is off" in _check(DISASTER, 2)
    assert world["variables"] == {}


class _AssetEvent:
    def __init__(self, payload: dict[str, Any]) -> None:
        self.extra = {"from_trigger": True, "payload": payload}


def test_a_disaster_held_for_three_probe_rounds_fails_over_on_the_first_run_it_starts(world: dict[str, Any]) -> None:
    op = auto_failover.AutoFailoverOperator(task_id="auto_failover")
    context = {"ti": FakeTaskInstance(DISASTER), "run_id": "asset_triggered__1",
               "triggering_asset_events": {"continuity-health-rounds": [
                   _AssetEvent({"kind": "disaster", "consecutive": 3, "summary": "score 7"})]}}
    op.execute(context)
    [conf] = world["triggered"]
    assert conf["reason"].startswith("automatic: disaster threshold held for 3 consecutive checks")


def test_a_degraded_round_event_counts_as_one_check(world: dict[str, Any]) -> None:
    op = auto_failover.AutoFailoverOperator(task_id="auto_failover")
    context = {"ti": FakeTaskInstance(DISASTER), "run_id": "asset_triggered__1",
               "triggering_asset_events": {"continuity-health-rounds": [_AssetEvent({"kind": "degraded",
                                                                                     "consecutive": 1})]}}
    with pytest.raises(AirflowSkipException, match="reached 1 time"):
        op.execute(context)


def test_the_primary_regions_own_view_tells_a_partition_from_a_loss(world: dict[str, Any]) -> None:
    from datetime import datetime, timezone

    from continuity.health.viewpoints import observe_primary, viewpoint_variable

    def seen(*, writable: bool, reachable: bool = True) -> str:
        return observe_primary("us-east-1", FakeNode(name="primary", writable=writable, reachable=reachable),
                               clock=lambda: datetime.now(timezone.utc)).model_dump_json()

    world["variables"][viewpoint_variable("us-east-1")] = seen(writable=True)
    for run in (1, 2):
        _check(DISASTER, run)
    skipped = _check(DISASTER, 3)
    assert skipped.startswith("no automatic failover: the primary's own region us-east-1 saw primary primary writable")
    assert world["triggered"] == [] and _streak(world)["count"] == 3, "kept: the next check decides at once"
    # The next observation from us-east-1 agrees with the monitor: the primary is gone.
    world["variables"][viewpoint_variable("us-east-1")] = seen(writable=False, reachable=False)
    assert _check(DISASTER, 4) == "triggered"
    [conf] = world["triggered"]
    assert "; viewpoint us-east-1: from us-east-1, 0 s ago: primary primary not reachable" in conf["reason"]

