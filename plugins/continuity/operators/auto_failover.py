"""AutoFailoverOperator: dr_health_monitor's automatic trigger of dr_failover, with flap protection. The decision
is continuity.health.autofailover's; this operator gathers its evidence, keeps the streak and triggers."""

from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Context, Variable
from airflow.sdk.exceptions import AirflowSkipException

from continuity.health.autofailover import (STREAK_VARIABLE, DisasterStreak, StandbyCandidate, ViewpointVerdict,
                                            decide_auto_failover)
from continuity.health.checks import primary_seen_alive
from continuity.health.viewpoints import describe_viewpoints, load_observations, partition_veto, viewpoint_regions
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.hooks.topology import ContinuityPolicyHook
from continuity.policy.model import Policy
from continuity.postgres.node import NodeUnreachable

__all__ = ["STREAK_VARIABLE", "AutoFailoverOperator", "disaster_rounds"]


def disaster_rounds(context: Context) -> int:
    """Consecutive disaster rounds the triggerer saw, when a probe-round event started this run (else 0)."""
    rounds = 0
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            payload = (getattr(event, "extra", None) or {}).get("payload") or {}
            if payload.get("kind") == "disaster":
                rounds = max(rounds, int(payload.get("consecutive", 0)))
    return rounds


class AutoFailoverOperator(TriggerDagRunOperator):
    """Count consecutive disaster assessments in which the primary itself fails (Variable
    `continuity_disaster_streak`); when the policy sets `health_monitor.auto_failover` and the streak
    reaches `consecutive_failures`, and no standby still hears from the primary (a second opinion from
    a path the monitor does not share) and the primary's own region has not seen it writable lately
    (dr_viewpoint_probe: a partition, not a loss), trigger dr_failover in failover mode to the DR region's
    healthiest standby, once, and reset the streak. A disaster score without the primary failing is an
    alert, never a promotion. Skips otherwise, saying why. Run it with trigger_rule ALL_DONE."""

    def __init__(self, *, assessment_task_id: str = "assess_health", policy_path: str | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("trigger_dag_id", "dr_failover")
        kwargs.setdefault("wait_for_completion", False)
        super().__init__(**kwargs)
        self.assessment_task_id = assessment_task_id
        self.policy_path = policy_path

    def execute(self, context: Context) -> Any:
        policy = ContinuityPolicyHook(policy_path=self.policy_path).policy
        settings = policy.health_monitor
        decision = decide_auto_failover(
            enabled=settings.auto_failover, consecutive_failures=settings.consecutive_failures,
            dr_region=policy.topology.dr_region,
            assessment=context["ti"].xcom_pull(task_ids=self.assessment_task_id, key="assessment"),
            streak=DisasterStreak.parse(Variable.get(STREAK_VARIABLE, default=None), warn=self.log.warning),
            rounds=disaster_rounds(context), run_id=context["run_id"],
            probe_candidates=lambda: self._probe_dr_standbys(policy),
            read_viewpoints=lambda: self._read_viewpoints(policy),
            primary_seen_alive=lambda: primary_seen_alive(
                {node.name: PostgresNodeHook(postgres_conn_id=node.conn_id, node_name=node.name).get_node()
                 for node in policy.topology.standbys}))
        for note in decision.notes:
            self.log.info("%s", note)
        if decision.streak is not None:
            Variable.set(STREAK_VARIABLE, decision.streak.dumps())
        if decision.alert:
            self.log.error("ALERT: %s", decision.alert)
        if not decision.trigger:
            raise AirflowSkipException(decision.reason)
        self.conf = {"target": decision.target, "mode": "failover", "max_lag_bytes": settings.max_lag_bytes,
                     "force": False, "dry_run": False, "incident_id": "", "reason": decision.reason,
                     "automatic": True}
        return super().execute(context)

    def _probe_dr_standbys(self, policy: Policy) -> dict[str, StandbyCandidate]:
        candidates = {}
        for node in policy.topology.standbys:
            if node.region != policy.topology.dr_region:
                continue
            try:
                lsns = PostgresNodeHook(postgres_conn_id=node.conn_id, node_name=node.name).get_node().lsns()
                candidates[node.name] = StandbyCandidate(reachable=True, in_recovery=lsns["current_lsn"] is None,
                                                         receive_lsn=lsns["receive_lsn"])
            except NodeUnreachable as exc:
                candidates[node.name] = StandbyCandidate(reachable=False, error=str(exc))
        return candidates

    def _read_viewpoints(self, policy: Policy) -> ViewpointVerdict:
        observations = load_observations(viewpoint_regions(policy), lambda key: Variable.get(key, default=None),
                                         warn=self.log.warning)
        views = describe_viewpoints(policy, observations)
        for line in views:
            self.log.info("viewpoint %s", line)
        primary_view = next(line for line in views if line.startswith(f"{policy.topology.primary.region}:"))
        return ViewpointVerdict(primary_view=primary_view, partition=partition_veto(policy, observations))
