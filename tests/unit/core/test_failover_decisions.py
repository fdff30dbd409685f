"""Failover decisions on fakes (fast tier): preflight's refusals, the fence's refusal to make two
primaries, and rollback's rule of never going back once the application was repointed."""

from __future__ import annotations

import pytest

from continuity.failover import steps as failover
from continuity.failover import records as failover_records
from continuity.policy.loading import load_policy
from continuity.failover.router import Endpoint
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


def _params(**kwargs) -> failover_records.FailoverParams:
    return failover_records.FailoverParams(**{"target": "dr", "reason": "fast tier", **kwargs})


def test_preflight_refuses_two_writable_nodes_before_anything_else() -> None:
    cluster, control, router = _cluster(sync1={"writable": True})
    with pytest.raises(failover_records.PreflightFailed, match="'at most one writable node' failed: primary and sync1"):
        failover.preflight(cluster, _params(), primary="primary")
    assert control.actions == [] and router.actions == []


def test_preflight_refuses_a_recorded_primary_that_is_not_the_writable_one() -> None:
    cluster, _, _ = _cluster()
    with pytest.raises(failover_records.PreflightFailed,
                       match="the recorded topology names sync1 as primary but primary is the writable node"):
        failover.preflight(cluster, _params(mode="failover"), primary="sync1")


def test_a_healthy_switchover_plan_names_every_step() -> None:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    assert plan.action == "switchover" and plan.lag_bytes == 0
    assert [c.check for c in plan.checks][:2] == ["at most one writable node", "topology matches the cluster"]
    assert failover_records.FailoverPlan.model_validate(plan.model_dump(mode="json")) == plan, "the XCom contract round-trips"


def test_failover_refuses_to_promote_while_the_old_primary_writes_and_cannot_be_fenced() -> None:
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    control.unreachable_hosts.add("primary")
    with pytest.raises(failover_records.FailoverError, match="refusing to promote dr: primary still accepts writes"):
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


def test_rollback_of_an_interrupted_failover_reads_the_nodes_not_the_missing_records() -> None:
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    # The worker died inside cut_over after the promotion, before any step's record was pushed.
    cluster.nodes["primary"].writable, cluster.nodes["dr"].writable = False, True
    result = failover.rollback(cluster, plan, fenced=False, promoted=False)
    assert result.writable == ["dr"]
    assert result.message == "failover stopped with exactly one writable primary: dr"
    assert "fence primary" in control.actions, "the old primary may not come back writable"


def test_a_rerun_fence_after_promotion_does_nothing() -> None:
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    cluster.nodes["primary"].writable, cluster.nodes["dr"].writable = False, True
    assert failover.fence(cluster, plan).already_done is True
    assert control.actions == [] and router.actions == []


# -- the audit ---------------------------------------------------------------------------------------
def _completed_switchover() -> failover_records.FailoverRecords:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary", run_id="manual__1")
    fence = failover.fence(cluster, plan)
    return failover_records.FailoverRecords(
        preflight=plan, fence=fence,
        catch_up=failover_records.CatchUpRecord(replayed_lsn=fence.final_lsn, data_loss_bytes=0),
        promote=failover_records.PromotionRecord(promoted_at=failover_records.now_iso(), timeline=2, previous_timeline=1, lsn="0/3000100"),
        repoint=failover_records.RepointRecord(resumed_at=failover_records.now_iso(), resumed_epoch=fence.paused_epoch + 1.25,
                                       endpoint="127.0.0.1:5434"),
        rejoin=failover_records.RejoinRecord(following=["sync1", "primary"], streaming=["primary", "sync1"]))


def test_the_audit_of_a_completed_switchover_names_the_new_topology_and_the_outage() -> None:
    records = _completed_switchover()
    audit = failover_records.compose_audit(run_id="manual__1", triggered_by="oncall", params={"target": "dr"},
                                   records=records, failures={})
    assert audit.outcome == "switchover to dr complete" and audit.action == "switchover"
    assert audit.unavailability_seconds == 1.25 and audit.data_loss_bytes == 0
    assert audit.topology == failover_records.TopologyRecord(primary="dr", timeline=2, previous_primary="primary",
                                                     changed_at=records.promote.promoted_at,
                                                     changed_by_run="manual__1", needs_rebuild=[])
    stored = audit.model_dump(mode="json")
    assert set(stored["steps"]) == set(failover_records.STEP_NAMES), "the audit's steps are keyed by task id"
    assert failover_records.FailoverAudit.model_validate(stored) == audit, "the stored audit reads back"


def test_the_audit_names_who_triggered_and_who_approved() -> None:
    records = _completed_switchover()
    records.approve = failover_records.ApprovalRecord(required=True, approved=True, approved_by="operator-2",
                                              triggered_by="operator-1", answer="Approve")
    audit = failover_records.compose_audit(run_id="manual__3", triggered_by="operator-1", params={}, records=records,
                                   failures={})
    assert (audit.triggered_by, audit.approved_by) == ("operator-1", "operator-2")
    assert failover_records.FailoverAudit.model_validate(audit.model_dump(mode="json")) == audit


def test_a_person_s_failover_waits_for_a_second_one_and_the_monitor_s_automatic_one_does_not() -> None:
    assert failover_records.approval_needed(required=True, triggered_by="operator-1")[0] is True
    needed, why = failover_records.approval_needed(required=True, triggered_by=None)
    assert needed is False and "automatic failover" in why, "auto_failover must not wait for a person"
    assert failover_records.approval_needed(required=False, triggered_by="operator-1") == (
        False, "the policy requires no second approval (failover.approval.required: false)")


def test_a_refused_approval_stops_the_run_before_the_fence_and_names_no_approver() -> None:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary", run_id="manual__4")
    records = failover_records.FailoverRecords(preflight=plan)
    audit = failover_records.compose_audit(run_id="manual__4", triggered_by="operator-1", params={}, records=records,
                                   failures={"approve": "rejected by operator-2; nothing changed"})
    assert audit.outcome == "failed at approve: rejected by operator-2; nothing changed"
    assert audit.approved_by is None and audit.topology is None and audit.unavailability_seconds is None


def test_the_audit_of_a_failed_run_names_the_first_failed_step_and_what_rollback_left() -> None:
    records = _completed_switchover()
    records.rollback = failover_records.RollbackRecord(rolled_back=True, writable=["primary"],
                                               message="switchover rolled back: primary serves again")
    audit = failover_records.compose_audit(run_id="manual__2", triggered_by=None, params={}, records=records,
                                   failures={"validate": "no standby streams", "rejoin": "sync1 not repointed"})
    assert audit.outcome == ("failed at rejoin: sync1 not repointed; switchover rolled back: primary serves again")
    assert audit.topology is None, "a promotion that was rolled back is not the topology"


def test_the_audit_of_a_dry_run_and_of_a_rerun_changes_nothing() -> None:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(dry_run=True), primary="primary")
    audit = failover_records.compose_audit(run_id="r", triggered_by=None, params={}, failures={},
                                   records=failover_records.FailoverRecords(preflight=plan))
    assert audit.outcome == "dry run: all checks passed, nothing changed" and audit.topology is None
    assert audit.unavailability_seconds is None and audit.data_loss_bytes is None


def test_a_record_missing_a_field_fails_loudly() -> None:
    with pytest.raises(ValueError, match="timeline"):
        failover_records.FailoverRecords.model_validate({"promote": {"promoted_at": "x", "previous_timeline": 1, "lsn": None}})


def test_catching_up_in_a_failover_waits_for_the_received_wal_to_settle_and_counts_the_loss() -> None:
    cluster, _, _ = _cluster(primary={"reachable": False, "writable": False})
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    fenced = failover_records.FenceRecord(started_at="t", last_known_primary_lsn_int=cluster.nodes["dr"].position + 4096)
    record = failover.wait_caught_up(cluster, plan, fenced, timeout=5, settle_seconds=0.2, interval=0.05)
    assert record.data_loss_bytes == 4096 and record.received_lsn_int == cluster.nodes["dr"].position


def test_catching_up_that_never_ends_is_a_failover_error() -> None:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    fenced = failover_records.FenceRecord(started_at="t", final_lsn="FF/0")
    with pytest.raises(failover_records.FailoverError, match="dr did not catch up within 0s"):
        failover.wait_caught_up(cluster, plan, fenced, timeout=0.3, interval=0.05)


def test_a_failover_away_from_the_control_region_says_its_orchestrator_shares_the_risk() -> None:
    policy = load_policy()  # control region us-west-2 (the DR region), primary in us-east-1
    assert failover_records.orchestrator_exposure(policy) is None
    after = policy.with_primary("dr")  # failed over into the control region: going home runs from there
    exposure = failover_records.orchestrator_exposure(after)
    assert exposure.startswith("the orchestrator runs in us-west-2 (deployment.control_region), the region of "
                               "primary dr that this run moves away from")
    assert "HINT: a third region as deployment.control_region" in exposure


# -- what the audit measures (continuity.reports, shared with drills and the region-loss exercise) ------------
def test_a_switchover_that_kept_the_application_in_place_measures_every_rpo_and_leaves_rto_unmeasured() -> None:
    from continuity.reports import failover_objectives

    records = _completed_switchover()
    records.start_application = failover_records.ApplicationRecord(from_region="us-east-1", to_region="us-east-1",
                                                                   moved=False)
    measured = failover_objectives(POLICY, records, replicas={})
    rpo = {o.objective: o for o in measured.rpo}
    database = [n for n, c in POLICY.data_categories.items() if c.measured_by == "database"]
    objects = [n for n, c in POLICY.data_categories.items() if c.measured_by == "object_replication"]
    assert database and objects
    for name in database:
        assert rpo[f"RPO {name}"].measured_seconds == 0.0 and "past primary's final checkpoint" in rpo[f"RPO {name}"].source
    for name in objects:
        assert rpo[f"RPO {name}"].verdict == "pass" and "no object left behind" in rpo[f"RPO {name}"].source
    assert all(o.verdict == "not measured" for o in measured.rto), "no probe round: no function's RTO was measured"


def test_a_failover_that_lost_bytes_does_not_claim_a_database_rpo() -> None:
    from continuity.reports import failover_objectives

    records = _completed_switchover()
    records.preflight = records.preflight.model_copy(update={"action": "failover"})
    records.catch_up = failover_records.CatchUpRecord(data_loss_bytes=8192)
    measured = failover_objectives(POLICY, records, replicas={})
    database = next(n for n, c in POLICY.data_categories.items() if c.measured_by == "database")
    line = next(o for o in measured.rpo if o.objective == f"RPO {database}")
    assert line.verdict == "not measured" and line.measured_seconds is None
    with pytest.raises(ValueError, match="preflight plan"):
        failover_objectives(POLICY, failover_records.FailoverRecords(), replicas={})


def test_each_data_category_is_measured_by_what_the_policy_says() -> None:
    from continuity.reports import Measurement, rpo_measurements

    by = {n: c.measured_by for n, c in POLICY.data_categories.items()}
    objects = {n: Measurement(seconds=3.0, source="heartbeat") for n, b in by.items() if b == "object_replication"}
    measured = rpo_measurements(POLICY, database=Measurement(seconds=0.5, source="marker"),
                                config=Measurement(seconds=60.0, source="config age"), objects=objects)
    for name, how in by.items():
        expected = {"database": 0.5, "config_backup": 60.0, "object_replication": 3.0}.get(how)
        assert (measured[name].seconds if name in measured else None) == expected, name
    assert rpo_measurements(POLICY, database=None) == {}, "nothing measured: every category left to `not measured`"


def test_preflight_refuses_the_primary_as_target_naming_the_check() -> None:
    cluster, control, router = _cluster()
    with pytest.raises(failover_records.PreflightFailed,
                       match=r"'target is not the primary' failed: primary is the primary \(writable: True, as the "
                             r"policy says\); nothing to switch over to"):
        failover.preflight(cluster, _params(target="primary"), primary="primary")
    assert control.actions == [] and router.actions == []


def test_without_a_node_control_in_the_policy_failover_cannot_start_and_says_what_to_set() -> None:
    from continuity.failover.nodecontrol import NodeControlError, node_control_for

    without = POLICY.model_copy(update={"topology": POLICY.topology.model_copy(update={"node_control": None})})
    with pytest.raises(NodeControlError, match="no node control is configured: set topology.node_control in the policy"):
        node_control_for(without)


def test_an_automatic_failover_decides_again_and_does_nothing_when_the_primary_answers_by_then() -> None:
    """#30 item 4: an automatic failover queued behind a drill's switchover (it waited for the cluster lease)
    finds the primary writable again: it changes nothing and says why."""
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(mode="failover", automatic=True), primary="primary")
    assert plan.action == "none" and plan.nothing_to_do == (
        "automatic failover decided again: primary answers and accepts writes again")
    assert control.actions == [] and router.actions == []
    audit = failover_records.compose_audit(run_id="auto__1", triggered_by=None, params={}, failures={},
                                           records=failover_records.FailoverRecords(preflight=plan))
    assert audit.outcome == "no change: automatic failover decided again: primary answers and accepts writes again"


def test_an_automatic_failover_whose_primary_is_still_lost_goes_ahead_and_a_manual_one_never_decides_again() -> None:
    cluster, _, _ = _cluster(primary={"reachable": False})
    assert failover.preflight(cluster, _params(mode="failover", automatic=True), primary="primary").action == "failover"
    healthy, _, _ = _cluster()
    assert failover.preflight(healthy, _params(mode="failover"), primary="primary").action == "failover", (
        "an operator's failover of a writable primary is theirs to decide: it fences it")


def _partitioned(**router) -> tuple:
    """The old primary unreachable from the control plane (lost, or behind a partition: it may still run)."""
    cluster, control, router_ = _cluster(primary={"reachable": False})
    control.unreachable_hosts.add("primary")
    for key, value in router.items():
        setattr(router_, key, value)
    return cluster, control, router_


def test_an_old_primary_that_cannot_be_reached_is_fenced_by_the_entry_point_and_the_record_says_so() -> None:
    """#30 item 6: unreachable is not gone. The entry point, paused, then repointed, is the fence."""
    cluster, control, router = _partitioned()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    messages: list[str] = []
    cluster.report = messages.append
    record = failover.fence(cluster, plan)
    assert record.old_primary_fenced is False and record.fenced_by_entry_point is True
    assert router.actions == ["pause"] and router.paused
    assert any("the entry point fences it instead" in m for m in messages), messages


def test_with_neither_the_old_primary_nor_the_entry_point_secured_the_failover_refuses_unless_forced() -> None:
    cluster, control, router = _partitioned(unreachable=True)
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    with pytest.raises(failover_records.FailoverError, match="refusing to promote dr: primary could not be reached "
                                                             "to stop or fence it .* and the entry point could not "
                                                             "be secured either"):
        failover.fence(cluster, plan)
    assert cluster.nodes["dr"].writable is False, "nothing promoted"
    forced = failover.preflight(cluster, _params(mode="failover", force=True), primary="primary")
    record = failover.fence(cluster, forced)
    assert record.forced_without_fence is True and record.fenced_by_entry_point is False


def test_rollback_names_the_nodes_it_could_not_check_instead_of_counting_them_not_writable() -> None:
    cluster, control, router = _partitioned()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    failover.fence(cluster, plan)
    record = failover.rollback(cluster, plan, fenced=True, promoted=False)
    assert record.unreachable == ["primary"]
    assert "could not reach primary to check whether it accepts writes" in record.message, record.message


# -- #31 item 8: a failover's database RPO is measured only where something could see the loss -----------------
def _failover_loss(cluster, *, sync1_answers: bool) -> tuple:
    """A failover with the old primary unreachable; dr received everything the standbys that answered held."""
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    cluster.nodes["sync1"].reachable = sync1_answers
    fence = failover.fence(cluster, plan)
    records = failover_records.FailoverRecords(preflight=plan, fence=fence,
                                               catch_up=failover_records.CatchUpRecord(data_loss_bytes=0))
    return failover_records.database_loss(records), fence


def test_a_failover_without_the_old_primary_measures_no_loss_only_when_the_synchronous_standbys_answered() -> None:
    cluster, _, _ = _partitioned()
    cluster.nodes["sync1"].position = cluster.nodes["dr"].position
    (seconds, source), fence = _failover_loss(cluster, sync1_answers=True)
    assert fence.old_primary_answered is False and fence.positions_from == ["dr", "sync1"]
    # The policy names sync1 and sync2 synchronous (ANY 1): sync2 is not in this cluster, so it did not answer.
    assert seconds is None and source.startswith("not measured: primary could not be asked for its last WAL position")
    assert "the synchronous standbys sync2 did not answer" in source


def test_a_failover_whose_synchronous_standbys_all_answered_measures_no_acknowledged_commit_lost() -> None:
    cluster, _, _ = _partitioned()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    plan = plan.model_copy(update={"synchronous_standbys": ["sync1"], "synchronous_quorum": 1})
    fence = failover.fence(cluster, plan)
    records = failover_records.FailoverRecords(preflight=plan, fence=fence,
                                               catch_up=failover_records.CatchUpRecord(data_loss_bytes=0))
    seconds, source = failover_records.database_loss(records)
    assert seconds == 0.0 and "sync1 answered after the fence" in source and "no acknowledged commit lost" in source


def test_a_failover_that_asked_the_old_primary_itself_measures_its_loss() -> None:
    cluster, _, _ = _cluster()
    plan = failover.preflight(cluster, _params(mode="failover"), primary="primary")
    fence = failover.fence(cluster, plan)
    assert fence.old_primary_answered is True and fence.positions_from == []
    records = failover_records.FailoverRecords(preflight=plan, fence=fence,
                                               catch_up=failover_records.CatchUpRecord(data_loss_bytes=0))
    assert failover_records.database_loss(records)[0] == 0.0


def test_a_switchover_on_fakes_cuts_over_then_rejoins_every_node_with_the_synchronous_standbys_chosen() -> None:
    """The steps after preflight in their order: fence, catch-up, promote, repoint, rejoin (the old primary
    rewound and restarted as a standby, sync1 repointed), and the new primary's synchronous standbys."""
    cluster, control, router = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    records = failover.cut_over(cluster, plan, catch_up_timeout=5)
    assert records.fence.final_lsn and records.catch_up.data_loss_bytes == 0
    assert records.promote.timeline == 2 and records.promote.previous_timeline == 1
    assert router.actions == ["pause", "point_to dr", "resume"] and router.routes_to.node == "dr"
    assert cluster.writable_nodes() == ["dr"]
    again = failover.promote(cluster, "dr", previous_timeline=1)
    assert again.already_promoted, "a re-run promotion sees the earlier attempt and does nothing"

    cluster.nodes["dr"].streaming_to = ["sync1", "primary"]
    rejoined = failover.rejoin(cluster, plan, stream_timeout=5)
    assert rejoined.following == ["sync1", "primary"] and rejoined.needs_rebuild == []
    assert rejoined.streaming == ["primary", "sync1"] and rejoined.synchronous_standbys == ["sync1"]
    assert control.actions[-6:] == ["follow(dr) sync1", "is_running primary", "rewind(dr) primary",
                                    "follow(dr) primary", "start primary", "make_primary_settings dr"]
    assert cluster.nodes["dr"].executed == ["CHECKPOINT"], "pg_rewind reads the new timeline from the control file"
    assert cluster.nodes["primary"].fenced and not cluster.nodes["primary"].writable


def test_rejoin_names_a_node_it_could_not_repoint_and_a_new_primary_without_synchronous_standbys_runs_alone() -> None:
    cluster, control, _ = _cluster()
    plan = failover.preflight(cluster, _params(), primary="primary")
    failover.cut_over(cluster, plan, catch_up_timeout=5)
    control.unreachable_hosts.add("sync1")
    messages: list[str] = []
    cluster.report = messages.append
    cluster.nodes["dr"].streaming_to = ["primary"]
    rejoined = failover.rejoin(cluster, plan, stream_timeout=0.5)
    assert rejoined.needs_rebuild == ["sync1"] and rejoined.synchronous_standbys == []
    assert any("sync1 could not be repointed" in m for m in messages)
    assert any("runs asynchronously until one does" in m for m in messages)


class _ApplicationControl:
    """The application tier's control as move_application sees it; `lost` regions do not answer."""

    def __init__(self, *, lost: set[str] = frozenset()) -> None:
        self.lost, self.actions = set(lost), []

    def _answer(self, region: str, action: str) -> None:
        self.actions.append(f"{action} {region}")
        if region in self.lost:
            raise ConnectionError(f"ssh to the application host of {region}: timed out")

    def promote_cache(self, region: str) -> str:
        self._answer(region, "promote_cache")
        return f"redis in {region} is the primary"

    def start_region(self, region: str) -> list[str]:
        self._answer(region, "start")
        return [f"web-{region}", f"worker-{region}"]

    def stop_region(self, region: str) -> list[str]:
        self._answer(region, "stop")
        return [f"web-{region}"]

    def follow_cache(self, region: str, upstream: str) -> str:
        self._answer(region, "follow_cache")
        return f"redis in {region} follows {upstream}"


def test_the_application_moves_with_the_primary_and_a_lost_old_region_is_a_note_not_a_failure() -> None:
    said: list[str] = []
    control = _ApplicationControl(lost={"us-east-1"})
    record = failover.move_application(control, from_region="us-east-1", to_region="us-west-2", report=said.append)
    assert control.actions == ["promote_cache us-west-2", "start us-west-2", "stop us-east-1", "follow_cache us-east-1"]
    assert record.moved and record.started == ["web-us-west-2", "worker-us-west-2"] and record.stopped == []
    assert record.notes[0] == ("could not stop the application in us-east-1: ssh to the application host of us-east-1: "
                               "timed out")
    assert record.notes[1].startswith("Redis in us-east-1 not repointed (unreachable?)")
    assert "it must follow us-west-2's before it serves again" in record.notes[1]
    assert record.notes == said[-2:], "every note is in the task log too"
    unmoved = failover.move_application(control, from_region="us-west-2", to_region="us-west-2", report=said.append)
    assert not unmoved.moved and said[-1].endswith("nothing to move")


def test_going_home_carries_objects_before_and_after_the_old_region_stops_and_names_what_failed() -> None:
    from datetime import datetime, timezone

    from continuity.objects.restore import FailBack

    passes = [FailBack(category="video_content", written_in="s3://videos-dr/", home="s3://videos/", since=None,
                       copied=["a.mp4"], failed=["b.mp4: ReadTimeout"]),
              FailBack(category="video_content", written_in="s3://videos-dr/", home="s3://videos/", since=None,
                       copied=["b.mp4"], already_home=1, failed=["c.mp4: ReadTimeout: written between the passes"])]
    calls: list[datetime] = []

    def carry() -> list[FailBack]:
        calls.append(datetime.now(timezone.utc))
        return [passes[len(calls) - 1]]

    control = _ApplicationControl()
    record = failover.move_application(control, from_region="us-west-2", to_region="us-east-1", report=lambda _m: None,
                                       carry_objects=carry)
    assert len(calls) == 2, "before the home region starts, and again once the old one is stopped"
    [home] = record.objects_home
    assert home["copied"] == ["a.mp4", "b.mp4"] and home["already_home"] == 0, "the first pass's copies are not 'already home'"
    assert record.notes[-1] == ("1 objects of video_content written in us-west-2 could not be copied home: "
                                "c.mp4: ReadTimeout: written between the passes; rows naming them fail to read "
                                "until they are")


def test_a_persons_approval_wait_is_reported_apart_from_the_recoverys_rto() -> None:
    """#31 item 7: the RTO counted from preflight included the minutes a run waited for a second person."""
    from datetime import datetime, timedelta

    from continuity.reports import failover_objectives

    records = _completed_switchover()
    planned = datetime.fromisoformat(records.preflight.checked_at)
    answered = planned + timedelta(seconds=600)
    back = answered + timedelta(seconds=12)
    records.validation = failover_records.ValidationRecord(
        validated_at=back.isoformat(), streaming=["primary"], not_streaming=[], archived_wal=None, timeline=2,
        application={"region": "us-west-2", "read_only": False, "transactions": [
            {"function": name, "transaction": "login", "ok": True, "reason": "ok", "finished_at": back.isoformat()}
            for name in POLICY.business_functions]})
    records.approve = failover_records.ApprovalRecord(required=True, approved=True, approved_by="operator-2",
                                                      triggered_by="operator-1", answer="Approve",
                                                      answered_at=answered.isoformat(), waited_seconds=600.0)
    rto = failover_objectives(POLICY, records, replicas={}).rto
    assert {o.measured_seconds for o in rto} == {12.0}, "from the answer, not from preflight (612 s)"
    assert all(f"counted from the approval by operator-2 at {answered.isoformat()} (the run waited 600.0 s for it, "
               f"reported apart)" in o.source for o in rto)
    audit = failover_records.compose_audit(run_id="manual__1", triggered_by="operator-1", params={"target": "dr"},
                                           records=records, failures={})
    assert audit.approval_wait_seconds == 600.0

    records.approve = failover_records.ApprovalRecord(required=False, approved=True, why="an automatic failover")
    rto = failover_objectives(POLICY, records, replicas={}).rto
    assert {o.measured_seconds for o in rto} == {612.0}
    assert all(f"counted from preflight at {records.preflight.checked_at}" in o.source for o in rto)


def test_a_region_back_after_a_loss_is_rebuilt_as_standbys_and_one_that_cannot_be_is_named() -> None:
    cluster, control, _ = _cluster(primary={"writable": False}, dr={"writable": True, "streaming_to": ["primary"]})
    control.unreachable_hosts.add("sync1")  # its host still does not answer
    said: list[str] = []
    cluster.report = said.append
    result = failover.rebuild_region(cluster, ["primary", "sync1"], primary="dr", stream_timeout=0.3)
    assert result.following == ["primary"] and result.needs_rebuild == ["sync1"]
    assert result.streaming == ["primary"]
    assert control.actions[:6] == ["ensure_slots dr", "is_running primary", "stop(fast) primary", "rewind(dr) primary",
                                   "follow(dr) primary", "start primary"]
    assert "CHECKPOINT" in cluster.nodes["dr"].executed, "pg_rewind reads the new timeline from the control file"
    assert any(s.startswith("sync1 could not be rebuilt as a standby of dr: host of node sync1: connection timed out")
               for s in said), said
    # sync1 and sync2 are the policy's synchronous standbys; neither streams: dr's commits wait for no one.
    assert result.synchronous_standbys == [] and "make_primary_settings dr" in control.actions
    assert said[-1] == "streaming from dr: primary; synchronous: none"
