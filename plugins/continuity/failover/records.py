"""What a switchover or failover is asked and what it did: the params, each step's record, the plan, the audit,
and the decisions made on records alone (approval needed, the orchestrator's exposure, the database's loss).
Pydantic models: XCom carries `model_dump(mode="json")`, readers `model_validate` them back. Nothing here
imports Airflow or touches a node (`continuity.failover.steps` does)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from continuity.policy.model import Policy, parse_size
from continuity.storage.locations import key_safe


DEFAULT_MAX_LAG_BYTES = 16 * 2**20
class FailoverError(RuntimeError):
    """A step could not complete; the message says what was checked and what state the cluster is in."""


class PreflightFailed(FailoverError):
    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"preflight check {check!r} failed: {message}. Nothing was changed.")
        self.check = check


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


# -- params ------------------------------------------------------------------------------------
class FailoverParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str
    mode: Literal["switchover", "failover"] = "switchover"
    max_lag_bytes: int = DEFAULT_MAX_LAG_BYTES
    force: bool = False
    dry_run: bool = False
    reason: str = ""
    incident_id: str | None = None
    # Set by dr_health_monitor's automatic trigger: the run decides again once it may act (after waiting for the
    # cluster lease another run held) and does nothing when the primary answers and accepts writes by then.
    automatic: bool = False

    @field_validator("max_lag_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)


class StepRecord(BaseModel):
    """What every step records; the operator running it adds its timing."""

    model_config = ConfigDict(extra="forbid")

    seconds: float | None = None
    step_started_at: str | None = None
    step_finished_at: str | None = None


class TopologyRecord(BaseModel):
    """Who is primary now, as dr_failover records it (the Variable continuity_topology, topology/current.json).

    Only `primary` is required: an operator correcting the Variable by hand may write just that."""

    model_config = ConfigDict(extra="forbid")

    primary: str
    timeline: int | None = None
    previous_primary: str | None = None
    changed_at: str | None = None
    changed_by_run: str | None = None
    needs_rebuild: list[str] = []


class FenceRecord(StepRecord):
    started_at: str
    finished_at: str | None = None
    last_known_primary_lsn_int: int = 0
    paused_at: str | None = None
    paused_epoch: float | None = None
    final_lsn: str | None = None  # switchover: the stopped primary's final checkpoint
    old_primary_fenced: bool | None = None  # failover: whether fencing succeeded
    # failover: the old primary could not be reached, so the paused (then repointed) entry point fenced it
    fenced_by_entry_point: bool = False
    forced_with_writable_old_primary: bool = False
    forced_without_fence: bool = False  # failover: neither the old primary nor the entry point could be secured
    # failover, fenced by the entry point: where the deposition notice for the old primary's guard went, and how
    # long the run waited for the guard to stop it (continuity.failover.guard)
    deposed_in: list[str] = []
    guard_wait_seconds: float | None = None
    # failover: whether the old primary itself told its last WAL position; if not, the standbys that did, read
    # after the fence (what the data loss estimate rests on: `database_loss`)
    old_primary_answered: bool = False
    positions_from: list[str] = []
    already_done: bool = False


class CatchUpRecord(StepRecord):
    data_loss_bytes: int
    replayed_lsn: str | None = None  # switchover
    received_lsn_int: int | None = None  # failover


class PromotionRecord(StepRecord):
    promoted_at: str
    timeline: int
    previous_timeline: int | None
    lsn: str | None
    already_promoted: bool = False


class RepointRecord(StepRecord):
    resumed_at: str
    resumed_epoch: float
    endpoint: str


class RejoinRecord(StepRecord):
    following: list[str] = []
    needs_rebuild: list[str] = []
    streaming: list[str] = []
    synchronous_standbys: list[str] = []


class ValidationRecord(StepRecord):
    validated_at: str
    streaming: list[str]
    not_streaming: list[str]
    archived_wal: str | None
    timeline: int
    application: dict[str, Any] | None = None  # the probe round (continuity.health.probes.ApplicationProbe) in the new region


class ApplicationRecord(StepRecord):
    """The application tier moved with the primary: started in the target's region, stopped in the old one."""

    from_region: str
    to_region: str
    moved: bool
    cache: str | None = None
    started: list[str] = []
    stopped: list[str] = []
    notes: list[str] = []
    # Objects the old region's application wrote, copied home (objects.FailBack as JSON, per category).
    objects_home: list[dict[str, Any]] = []


class RollbackRecord(StepRecord):
    rolled_back: bool
    writable: list[str]
    message: str
    failed_forward: bool = False
    unreachable: list[str] = []  # nodes whose writability rollback could not check


class PreflightCheck(BaseModel):
    model_config = ConfigDict(extra="forbid")

    check: str
    ok: bool
    detail: str


class FailoverPlan(StepRecord):
    """What preflight decided, the contract every later step (and the audit) reads: XCom carries
    `model_dump(mode="json")`, steps take `FailoverPlan.model_validate(...)`, a missing field fails loudly."""

    model_config = ConfigDict(extra="forbid")

    params: FailoverParams
    old_primary: str
    target: str
    checks: list[PreflightCheck]
    checked_at: str
    action: Literal["switchover", "failover", "none"]
    dry_run: bool = False
    forced: bool = False
    lag_bytes: int = 0
    reference_lsn_int: int = 0
    target_received_lsn_int: int = 0
    primary_alive: bool = False
    old_timeline: int | None = None
    other_standbys: list[str] = []
    # Nodes of a lost region: nothing reaches them (no fence, no rewind) until they are rebuilt.
    unreachable: list[str] = []
    plan: list[str] = []  # the steps to come, one sentence each
    topology: TopologyRecord | None = None  # the recorded topology, when this run already completed
    nothing_to_do: str | None = None  # with action "none": why
    triggered_by: str | None = None
    old_primary_since: str | None = None  # when the recorded topology made the old primary primary
    # The policy's synchronous standbys and how many of them each commit waits for (`database_loss`: with enough
    # of them answering, no acknowledged commit can be beyond the newest position they hold).
    synchronous_standbys: list[str] = []
    synchronous_quorum: int = 1


def validate_params(raw: Mapping[str, Any], policy: Policy) -> FailoverParams:
    """Check the trigger form before anything else runs; each failure names the param."""
    values = {k: v for k, v in raw.items() if k in FailoverParams.model_fields}
    if values.get("incident_id") in ("", None):
        values["incident_id"] = None
    try:
        params = FailoverParams(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "params"
        raise PreflightFailed(f"param {where}", f"{first['msg']} (got {first.get('input')!r})") from None
    nodes = [n.name for n in policy.topology.nodes]
    if params.target not in nodes:
        raise PreflightFailed("target is a known node",
                              f"target {params.target!r} is not a node of the policy (nodes: {', '.join(nodes)})")
    if not params.reason.strip():
        raise PreflightFailed("reason given", "a non-empty reason is required: it goes into the logs and the audit")
    return params


# -- audit and topology ------------------------------------------------------------------------
def topology_record(*, plan: FailoverPlan, promotion: PromotionRecord, rejoin_result: RejoinRecord | None,
                    run_id: str) -> TopologyRecord:
    return TopologyRecord(primary=plan.target, timeline=promotion.timeline, previous_primary=plan.old_primary,
                          changed_at=promotion.promoted_at, changed_by_run=run_id,
                          needs_rebuild=rejoin_result.needs_rebuild if rejoin_result else [plan.old_primary])


def unavailability_seconds(fenced: FenceRecord | None, repointed: RepointRecord | None) -> float | None:
    """How long the entry point held clients: from its pause (fence) to its resume (repoint)."""
    if fenced is None or repointed is None or fenced.paused_epoch is None:
        return None
    return round(repointed.resumed_epoch - fenced.paused_epoch, 3)


class ApprovalRecord(StepRecord):
    """The second person's answer to a manual switchover or failover (task `approve`), or why none was asked."""

    required: bool
    approved: bool
    approved_by: str | None = None
    triggered_by: str | None = None
    answer: str | None = None  # the option chosen; None when no one answered before the timeout
    rechecked: list[str] = []  # preflight's checks run again once approved: the cluster may have moved meanwhile
    why: str = ""  # why an approval was, or was not, asked for
    answered_at: str | None = None  # when the person answered (Airflow's record of the response)
    # Preflight's plan to the answer: time spent waiting for a person, reported apart from the recovery's RTO.
    waited_seconds: float | None = None

    @property
    def answered(self) -> datetime | None:
        return datetime.fromisoformat(self.answered_at) if self.answered_at else None


def approval_refusal(record: Mapping[str, Any] | None, *, required: bool, triggered_by: str | None) -> str | None:
    """Why the cut-over may not go ahead on `record` (the approve step's XCom), or None when it may. The recorded
    decision is what counts, not the approve task's state: a task marked success by hand leaves no record."""
    needed, _ = approval_needed(required=required, triggered_by=triggered_by)
    if record is None:
        return ("no approval is recorded for this run (was the approve task marked success by hand?); "
                "nothing changed. HINT: trigger again and have a second dr_operator answer the approval")
    try:
        approval = ApprovalRecord.model_validate(record)
    except ValidationError as exc:
        return f"the recorded approval is unreadable ({exc.errors()[0]['msg']}); nothing changed"
    if not approval.approved:
        return "the recorded approval says not approved; nothing changed"
    if needed and (not approval.required or approval.approved_by is None):
        return ("the policy requires a second person's approval and none is recorded (the approve step did not ask, "
                "or nobody answered); nothing changed")
    if needed and approval.approved_by == triggered_by:
        return f"approved by {approval.approved_by}, who triggered the run: a second person must approve; nothing changed"
    return None


def approval_needed(*, required: bool, triggered_by: str | None) -> tuple[bool, str]:
    """Whether a run waits for a second person, and why. A person's trigger (the run has a triggering user)
    waits when the policy requires it; a run started by dr_health_monitor's automatic failover has none
    (scheduled and asset-triggered runs carry no user) and goes ahead: `health_monitor.auto_failover` is the
    consent given for it, and waiting for a person would undo the point of it."""
    if not required:
        return False, "the policy requires no second approval (failover.approval.required: false)"
    if not triggered_by:
        return False, ("started by no person (dr_health_monitor's automatic failover): no second approval; "
                       "health_monitor.auto_failover is the consent for it")
    return True, f"triggered by {triggered_by}: a second dr_operator must approve (failover.approval.required)"


def orchestrator_exposure(policy: Policy) -> str | None:
    """Why this failover's orchestrator is at risk: its tasks run in the control region, and when the primary
    they move away from is in that region (after a failover into it), losing the region loses both. None
    when the control region is another one."""
    region = policy.topology.primary.region
    if policy.control_region != region:
        return None
    return (f"the orchestrator runs in {region} (deployment.control_region), the region of primary "
            f"{policy.topology.primary.name} that this run moves away from: were {region} lost, this run would be "
            f"lost with it (HINT: a third region as deployment.control_region survives the loss of either)")


class FailoverRecords(BaseModel):
    """Every step's record of one switchover or failover, in order: the audit's `steps` (keyed by task id)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    preflight: FailoverPlan | None = None
    approve: ApprovalRecord | None = None
    fence: FenceRecord | None = None
    catch_up: CatchUpRecord | None = None
    promote: PromotionRecord | None = None
    repoint: RepointRecord | None = None
    start_application: ApplicationRecord | None = None
    rejoin: RejoinRecord | None = None
    validation: ValidationRecord | None = Field(default=None, alias="validate")  # task id `validate`
    rollback: RollbackRecord | None = None

    @property
    def unavailability_seconds(self) -> float | None:
        return unavailability_seconds(self.fence, self.repoint)

    def step_seconds(self) -> dict[str, float | None]:
        return {name: getattr(self, attribute).seconds for name, attribute in _STEP_ATTRIBUTES.items()
                if getattr(self, attribute) is not None}


# The task ids of dr_failover, in order, and the record attribute of each.
_STEP_ATTRIBUTES = {"preflight": "preflight", "approve": "approve", "fence": "fence", "catch_up": "catch_up", "promote": "promote",
                    "repoint": "repoint", "start_application": "start_application", "rejoin": "rejoin", "validate": "validation", "rollback": "rollback"}
STEP_NAMES = tuple(_STEP_ATTRIBUTES)


class FailoverAudit(BaseModel):
    """The audit record of one dr_failover run: who, why, every step's record, the outcome."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["failover-audit"] = "failover-audit"
    run_id: str
    triggered_by: str | None
    approved_by: str | None = None  # the second person (None: approval not required, or not given)
    params: dict[str, Any]
    action: str | None
    steps: FailoverRecords
    failures: dict[str, str]
    recorded_at: str
    unavailability_seconds: float | None
    data_loss_bytes: int | None
    topology: TopologyRecord | None
    outcome: str
    # The run whose cluster lease this one waited for before it decided (None: it did not wait).
    waited_for_lease_of: str | None = None
    # How long the run waited for a second person's approval (None: none was asked, or none answered).
    approval_wait_seconds: float | None = None
    # Each business function's RTO: from preflight (or, when a person had to approve, from the answer: the
    # wait is `approval_wait_seconds`) until its synthetic transaction succeeded in the new primary's region
    # (continuity.reports.Objective as JSON; `not measured` without a probe round).
    function_rto: list[dict[str, Any]] = []
    # Each data category's and business function's RPO (see `database_loss`); `not measured` where nothing does.
    function_rpo: list[dict[str, Any]] = []
    downtime_cost: str = "not measured"  # the run's start until every function was back, on the policy's table

    def summary(self) -> dict[str, Any]:
        return self.model_dump(mode="json", include={"outcome", "unavailability_seconds", "data_loss_bytes", "topology"})


def database_loss(records: FailoverRecords) -> tuple[float | None, str | None]:
    """The database's RPO from the steps' records, in seconds: 0 when the target replayed past the old
    primary's final checkpoint (switchover) or received every byte it was last seen to write (failover);
    None (not measured) when bytes were lost, since their age is not known."""
    plan, caught = records.preflight, records.catch_up
    if plan is None or caught is None:
        return None, None
    if plan.action == "switchover" and caught.replayed_lsn:
        final = records.fence.final_lsn if records.fence else None
        return 0.0, (f"switchover: {plan.target} replayed to {caught.replayed_lsn}, past {plan.old_primary}'s final "
                     f"checkpoint {final}: no committed transaction lost")
    if caught.data_loss_bytes == 0:
        fence = records.fence
        if fence is not None and not fence.already_done and not fence.old_primary_answered:
            return _loss_without_the_old_primary(plan, fence)
        return 0.0, (f"failover: {plan.target} received every WAL byte {plan.old_primary} was last seen to have "
                     f"written (data loss estimate 0 bytes)")
    return None, None


def _loss_without_the_old_primary(plan: FailoverPlan, fence: FenceRecord) -> tuple[float | None, str | None]:
    """0 bytes behind the nodes that answered is a measurement only when they must hold every acknowledged commit:
    enough of the synchronous standbys (all but quorum - 1 of them) answered after the fence."""
    old, target = plan.old_primary, plan.target
    synchronous = [name for name in plan.synchronous_standbys if name != old]
    answered = [name for name in synchronous if name in fence.positions_from]
    needed = len(synchronous) - plan.synchronous_quorum + 1
    heard = ", ".join(fence.positions_from) or "none"
    if synchronous and len(answered) >= needed:
        return 0.0, (f"failover: {old} could not be asked, but {', '.join(answered)} answered after the fence (each "
                     f"commit waited for {plan.synchronous_quorum} of {', '.join(synchronous)}) and {target} "
                     f"received all they held: no acknowledged commit lost")
    missing = [name for name in synchronous if name not in answered]
    why = (f"the synchronous standbys {', '.join(missing)} did not answer" if missing and synchronous else
           "no synchronous standby holds what it committed")
    return None, (f"not measured: {old} could not be asked for its last WAL position and {why}; {target} received "
                  f"everything the nodes that answered held ({heard}), but what {old} committed beyond that is "
                  f"unknown")


AUDIT_PREFIX = "audit/failover/"  # where dr_failover writes each run's FailoverAudit, in every required location


def audit_run_prefix(run_id: str) -> str:
    """Where one run's audits are: `key_safe` alone maps `a:b` and `a_b` to one name, so a digest of the run
    id keeps two runs apart."""
    return f"{AUDIT_PREFIX}{key_safe(run_id)}-{hashlib.sha256(run_id.encode()).hexdigest()[:8]}/"


def audit_name(run_id: str, *, attempt: int, at: datetime) -> str:
    """The key (under AUDIT_PREFIX, without `.json`) of one attempt's audit: a rerun of the run, or a retry of
    its record step, adds an audit beside the earlier ones and never overwrites them."""
    return f"{audit_run_prefix(run_id).removeprefix(AUDIT_PREFIX)}try{attempt:03d}-{at:%Y%m%dT%H%M%S%f}"


def compose_audit(*, run_id: str, triggered_by: str | None, params: Mapping[str, Any], records: FailoverRecords,
                  failures: Mapping[str, str]) -> FailoverAudit:
    """Put the steps' records together; the new topology only when a promotion stood (not rolled back)."""
    plan = records.preflight
    topology = None
    if records.promote is not None and plan is not None and not (records.rollback and records.rollback.rolled_back):
        topology = topology_record(plan=plan, promotion=records.promote, rejoin_result=records.rejoin, run_id=run_id)
    if failures:
        first = next(name for name in STEP_NAMES if name in failures)
        outcome = f"failed at {first}: {failures[first]}" + (f"; {records.rollback.message}" if records.rollback else "")
    elif plan is None:
        outcome = "no plan"
    elif plan.action == "none":
        outcome = f"no change: {plan.nothing_to_do or f'this run already made {plan.target} the primary'}"
    elif plan.dry_run:
        outcome = "dry run: all checks passed, nothing changed"
    else:
        outcome = f"{plan.action} to {plan.target} complete"
    approved_by = records.approve.approved_by if records.approve and records.approve.approved else None
    return FailoverAudit(run_id=run_id, triggered_by=triggered_by, approved_by=approved_by, params=dict(params),
                         approval_wait_seconds=records.approve.waited_seconds if records.approve else None,
                         action=plan.action if plan else None, steps=records, failures=dict(failures),
                         recorded_at=now_iso(), unavailability_seconds=records.unavailability_seconds,
                         data_loss_bytes=records.catch_up.data_loss_bytes if records.catch_up else None,
                         topology=topology, outcome=outcome)
