"""AutoFailoverOperator: dr_health_monitor's automatic trigger of dr_failover, with flap protection."""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import Context, Variable
from airflow.sdk.exceptions import AirflowSkipException

from continuity.failover.records import choose_target
from continuity.health.checks import primary_failing, primary_seen_alive
from continuity.hooks.postgres_node import PostgresNodeHook
from continuity.postgres.node import NodeUnreachable
from continuity.hooks.topology import ContinuityPolicyHook
from continuity.health.viewpoints import describe_viewpoints, load_observations, partition_veto, viewpoint_regions

STREAK_VARIABLE = "continuity_disaster_streak"


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
        assessment = context["ti"].xcom_pull(task_ids=self.assessment_task_id, key="assessment")
        if not settings.auto_failover:
            raise AirflowSkipException("automatic failover is off (health_monitor.auto_failover: false)")
        if assessment is None:
            raise AirflowSkipException("the assessment did not report: no automatic decision this time")
        streak = json.loads(Variable.get(STREAK_VARIABLE, default=None) or '{"count": 0}')
        if not assessment.get("disaster"):
            if streak.get("count"):
                self.log.info("no disaster this check: the streak of %s ends", streak["count"])
            Variable.set(STREAK_VARIABLE, json.dumps({"count": 0}))
            raise AirflowSkipException("no disaster: nothing to do")
        if not primary_failing(assessment):
            # e.g. a standby down (network, 2) plus a bucket gone (storage, 1): a disaster to alert on,
            # but promoting a standby while the primary accepts writes would make two primaries.
            Variable.set(STREAK_VARIABLE, json.dumps({"count": 0}))
            self.log.error("ALERT: disaster threshold reached (%s) while the primary itself passes its check",
                           assessment.get("summary", ""))
            raise AirflowSkipException("disaster alert without promotion: the primary itself answers and accepts "
                                       "writes; automatic failover needs the primary failing")
        rounds = disaster_rounds(context)
        streak = {"count": max(int(streak.get("count", 0)) + 1, rounds), "last_run": context["run_id"],
                  "since": streak.get("since") or context["run_id"]}
        if rounds:
            self.log.info("started by the probe rounds: the disaster held for %s consecutive 30-second rounds", rounds)
        needed = settings.consecutive_failures
        if streak["count"] < needed:
            Variable.set(STREAK_VARIABLE, json.dumps(streak))
            raise AirflowSkipException(f"disaster threshold reached {streak['count']} time(s) in a row; automatic "
                                       f"failover waits for {needed} (flap protection)")
        candidates = {}
        for node in policy.topology.standbys:
            if node.region != policy.topology.dr_region:
                continue
            try:
                lsns = PostgresNodeHook(postgres_conn_id=node.conn_id, node_name=node.name).get_node().lsns()
                candidates[node.name] = {"reachable": True, "in_recovery": lsns["current_lsn"] is None,
                                         "receive_lsn": lsns["receive_lsn"]}
            except NodeUnreachable as exc:
                candidates[node.name] = {"reachable": False, "error": str(exc)}
        target = choose_target(candidates)
        if target is None:
            Variable.set(STREAK_VARIABLE, json.dumps(streak))
            raise AirflowSkipException(f"disaster for {streak['count']} checks but no healthy standby in the DR "
                                       f"region {policy.topology.dr_region} to fail over to: {candidates}")
        observations = load_observations(viewpoint_regions(policy), lambda key: Variable.get(key, default=None),
                                         warn=self.log.warning)
        views = describe_viewpoints(policy, observations)
        for line in views:
            self.log.info("viewpoint %s", line)
        primary_view = next(line for line in views if line.startswith(f"{policy.topology.primary.region}:"))
        partition = partition_veto(policy, observations)
        if partition:
            # The streak is kept: if the primary did go down, that region's next observation says so (or it
            # falls silent) and the next check fails over without counting again.
            Variable.set(STREAK_VARIABLE, json.dumps(streak))
            self.log.error("ALERT: the monitor cannot reach the primary, but %s", partition)
            raise AirflowSkipException(f"no automatic failover: {partition}")
        standbys = {node.name: PostgresNodeHook(postgres_conn_id=node.conn_id, node_name=node.name).get_node()
                    for node in policy.topology.standbys}
        alive = primary_seen_alive(standbys)
        if alive:
            Variable.set(STREAK_VARIABLE, json.dumps({"count": 0}))
            self.log.error("ALERT: the monitor cannot reach the primary, but %s", alive)
            raise AirflowSkipException(f"no automatic failover: {alive}")
        self.log.info("confirmed from the standbys' side: none of %s hears from the primary", ", ".join(standbys))
        Variable.set(STREAK_VARIABLE, json.dumps({"count": 0, "triggered_by": context["run_id"]}))
        self.conf = {"target": target, "mode": "failover", "max_lag_bytes": settings.max_lag_bytes, "force": False,
                     "dry_run": False, "incident_id": "",
                     "reason": f"automatic: disaster threshold held for {streak['count']} consecutive checks; "
                               f"viewpoint {primary_view} ({assessment.get('summary', '')})"[:500]}
        self.log.warning("triggering dr_failover: failover to %s after %s consecutive disaster checks",
                         target, streak["count"])
        return super().execute(context)
