"""Switchover and failover, step by step, with a sentence for every decision.

The steps are the dr_failover DAG's tasks: preflight, fence, catch up, promote, repoint, rejoin,
validate, and (on failure) roll back. Each works on a `ReplicationGroup` (admin connections to the nodes,
host-level `NodeControl`, the application's `Router`) and returns a record of what it did, a pydantic
model (XCom carries `model_dump(mode="json")`, readers `model_validate` it back); the audit is those
records put together. Nothing here imports Airflow.

Invariant: at every step boundary at most one node accepts writes through the entry point. A
switchover loses no committed transaction (the target replays up to the stopped primary's final
checkpoint before it is promoted); a failover reports the bytes it could not receive. Once the
application has been repointed a failure never rolls back (clients may have committed on the new
primary): it fails forward and says what is left to do.

Longer than 600 lines on purpose: the steps share the invariant above and each one's checks depend on
what the step before it left, so the file reads top to bottom as one switchover. The records, the plan and
the decisions made on records already live apart (failover.records).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg

from continuity.failover.guard import FENCE_MARGIN_SECONDS, Deposer
from continuity.failover.nodecontrol import NodeControl, NodeControlError
from continuity.policy.model import Policy
from continuity.postgres.node import NodeUnreachable, PostgresNode, lsn_to_int
from continuity.failover.router import Endpoint, Router, RouterError
from continuity.waiting import poll
from continuity.failover.records import (ApplicationRecord, CatchUpRecord, FailoverError, FailoverParams, FailoverPlan,
                                         FailoverRecords, FenceRecord, PreflightCheck, PreflightFailed, PromotionRecord,
                                         RejoinRecord, RepointRecord, RollbackRecord, StepRecord, TopologyRecord,
                                         ValidationRecord, _STEP_ATTRIBUTES, now_iso, topology_record)

PROBE_TABLE = "continuity_failover_probes"


# -- what the steps act on --------------------------------------------------------------------
@dataclass
class ReplicationGroup:
    """The primary and its standbys (admin connections), their host-level control and the entry point.

    ("Cluster" is kept for one PostgreSQL instance, as PostgreSQL itself uses it: LocalCluster.)"""

    policy: Policy
    nodes: dict[str, PostgresNode]
    endpoints: dict[str, Endpoint]
    control: NodeControl
    router: Router
    app_conninfo: str
    report: Callable[[str], None] = print
    timings: dict[str, float] = field(default_factory=dict)
    # The guards beside the nodes (policy failover.primary_guard): None when none runs.
    deposer: Deposer | None = None

    def probe(self, name: str) -> dict[str, Any]:
        """Role and positions of a node, or why it cannot answer."""
        try:
            lsns = self.nodes[name].lsns()
        except NodeUnreachable as exc:
            return {"reachable": False, "error": str(exc)}
        in_recovery = lsns["current_lsn"] is None
        return {"reachable": True, "in_recovery": in_recovery, **{k: v for k, v in lsns.items() if k.endswith("lsn")}}

    def writable_nodes(self) -> list[str]:
        return [n for n in self.nodes if (p := self.probe(n))["reachable"] and not p["in_recovery"]]


def current_timeline(node: PostgresNode) -> int:
    """The timeline WAL is written (primary) or replayed (standby) on, without waiting for a checkpoint."""
    row = node.query_one(
        "SELECT CASE WHEN pg_is_in_recovery() THEN (SELECT received_tli FROM pg_stat_wal_receiver) "
        "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS tli")
    return int(row["tli"]) if row.get("tli") is not None else node.timeline()


# -- 1. preflight ------------------------------------------------------------------------------
def preflight(cluster: ReplicationGroup, params: FailoverParams, *, primary: str, run_id: str = "",
              recorded: TopologyRecord | None = None, unreachable: Collection[str] = ()) -> FailoverPlan:
    """Every check before anything changes; returns the plan, or raises PreflightFailed naming the check.

    A rerun of a run that already completed (the recorded topology names this run) is a no-op.
    `unreachable`: nodes of a lost region, which later steps leave alone (they need a rebuild)."""
    report = cluster.report
    checks: list[PreflightCheck] = []

    def check(name: str, ok: bool, sentence: str) -> None:
        checks.append(PreflightCheck(check=name, ok=ok, detail=sentence))
        report(f"{'ok    ' if ok else 'FAILED'} {name}: {sentence}")
        if not ok:
            raise PreflightFailed(name, sentence)

    target = params.target
    report(f"{params.mode} to {target} requested: {params.reason!r}"
           + (f" (incident {params.incident_id})" if params.incident_id else "") + (" — DRY RUN" if params.dry_run else ""))
    base = {"params": params, "old_primary": primary, "target": target, "checks": checks, "checked_at": now_iso(),
            "old_primary_since": recorded.changed_at if recorded and recorded.primary == primary else None}
    if params.automatic and params.mode == "failover":
        # Decided by the monitor before this run could act (it may have waited for another run's lease, e.g. a
        # drill's switchover): decide again on the cluster as it is now.
        now_primary = cluster.probe(primary)
        if target == primary or (now_primary.get("reachable") and not now_primary.get("in_recovery", True)):
            why = (f"{target} is the primary already" if target == primary else
                   f"{primary} answers and accepts writes again")
            report(f"automatic failover decided again: {why}; nothing will be done")
            checks.append(PreflightCheck(check="the primary is still lost (automatic failover)", ok=True,
                                         detail=f"no: {why}; the run does nothing"))
            return FailoverPlan(**base, action="none", topology=recorded,
                                nothing_to_do=f"automatic failover decided again: {why}")
    if target == primary:
        state = cluster.probe(target)
        writable = bool(state.get("reachable") and not state.get("in_recovery"))
        topology = (f"{target} is the primary (writable: {writable}"
                    + (f", timeline {recorded.timeline}, since {recorded.changed_at} by run "
                       f"{recorded.changed_by_run}" if recorded else ", as the policy says") + ")")
        if recorded and recorded.changed_by_run == run_id and recorded.primary == target:
            report(f"this run already completed: {topology}; nothing will be done")
            return FailoverPlan(**base, action="none", topology=recorded,
                                nothing_to_do=f"this run already made {target} the primary")
        check("target is not the primary", False, f"{topology}; nothing to switch over to")

    writable = cluster.writable_nodes()
    check("at most one writable node", len(writable) <= 1,
          f"writable now: {', '.join(writable) or 'none'}" if len(writable) <= 1 else
          f"{' and '.join(writable)} all accept writes (a split brain): fence all but one by hand before any "
          f"switchover or failover")
    if writable:
        check("topology matches the cluster", writable == [primary],
              f"{primary} is the writable node, as recorded" if writable == [primary] else
              f"the recorded topology names {primary} as primary but {writable[0]} is the writable node; "
              f"correct the Variable continuity_topology (or the policy) to what is true first")
    target_state = cluster.probe(target)
    check("target reachable", target_state["reachable"],
          f"{target} answers" if target_state["reachable"] else target_state.get("error", "unreachable"))
    check("target in recovery", target_state["in_recovery"],
          f"{target} is a standby" if target_state["in_recovery"] else
          f"{target} is already writable while the topology records {primary} as primary: resolve that first")
    primary_state = cluster.probe(primary)
    primary_alive = primary_state["reachable"] and not primary_state.get("in_recovery", True)
    if params.mode == "switchover":
        check("primary healthy", primary_alive,
              f"{primary} is writable" if primary_alive else
              f"{primary} is not a writable primary ({primary_state.get('error') or 'in recovery'}); "
              f"a switchover needs it, use mode=failover if it is lost")
    else:
        report(f"note   primary {primary} is {'still writable: it will be stopped and fenced' if primary_alive else 'down or unusable'}")

    receiver = cluster.nodes[target].wal_receiver()
    target_tli = current_timeline(cluster.nodes[target])
    if primary_alive:
        primary_tli = current_timeline(cluster.nodes[primary])
        check("target on the primary's timeline", target_tli == primary_tli,
              f"{target} is on timeline {target_tli}, {primary} on {primary_tli}")
    if params.mode == "switchover":
        status = receiver.status if receiver else "no WAL receiver"
        check("target streaming", status == "streaming", f"{target}'s WAL receiver is {status}")
    else:
        report(f"note   {target}'s WAL receiver is {receiver.status if receiver else 'not running'}")

    # How far behind: against the primary when it answers, else the most advanced node that does.
    positions = {primary: lsn_to_int(primary_state.get("current_lsn"))} if primary_alive else {}
    for name in cluster.nodes:
        if name not in (primary, target):
            state = cluster.probe(name)
            if state["reachable"] and state.get("in_recovery"):
                positions[name] = lsn_to_int(state.get("receive_lsn"))
    target_received = lsn_to_int(target_state.get("receive_lsn"))
    target_replayed = lsn_to_int(target_state.get("replay_lsn"))
    reference = max([target_received, *positions.values()])
    lag = max(0, reference - target_replayed)
    within = lag <= params.max_lag_bytes
    forced = not within and params.force and params.mode == "failover"
    check("target lag", within or forced,
          f"{target} has replayed to {lag:,} bytes behind the most advanced known position "
          f"(limit {params.max_lag_bytes:,})"
          + ("; over the limit, accepted because force=true (recorded in the audit)" if forced else "")
          + ("" if within or forced else "; in failover mode force=true accepts it"))
    others = [n for n in cluster.nodes if n not in (primary, target)]
    lost = sorted(set(unreachable) & set(cluster.nodes))
    if target in lost:
        check("target reachable", False, f"{target} is in the lost region")
    if lost:
        report(f"note   {', '.join(lost)} in the lost region: left alone until rebuilt as standbys of {target}")
    return FailoverPlan(**base, action=params.mode, dry_run=params.dry_run, forced=forced, lag_bytes=lag,
            reference_lsn_int=reference, target_received_lsn_int=target_received, primary_alive=primary_alive,
            old_timeline=target_tli, other_standbys=others, unreachable=lost,
            synchronous_standbys=[node.name for node in cluster.policy.topology.nodes if node.synchronous],
            synchronous_quorum=cluster.policy.topology.synchronous_quorum,
            plan=[f"pause {cluster.router.describe()}",
                     f"{'stop' if primary_alive else 'fence'} {primary}",
                     f"wait for {target} to {'replay the final LSN' if params.mode == 'switchover' else 'stop receiving'}",
                     f"promote {target}", f"repoint the application to {target}",
                     *[f"make {n} follow {target}" for n in others], f"rejoin {primary} with pg_rewind",
                     "validate a write, replication and archiving", "record the topology and the audit"])


# -- 2. fence ----------------------------------------------------------------------------------
def fence(cluster: ReplicationGroup, plan: FailoverPlan, *, pause_timeout: float | None = None) -> FenceRecord:
    report = cluster.report
    if pause_timeout is None:
        pause_timeout = cluster.policy.failover.pause_timeout.total_seconds()
    old, mode = plan.old_primary, plan.action
    record = FenceRecord(started_at=now_iso())
    target_state = cluster.probe(plan.target)
    if target_state.get("reachable") and not target_state.get("in_recovery"):
        # A cleared and re-run task: the cluster, not the stale plan, says what is left to do.
        report(f"{plan.target} already accepts writes: an earlier attempt got past this step; nothing to fence")
        return record.model_copy(update={"already_done": True, "finished_at": now_iso(),
                                         "last_known_primary_lsn_int": plan.reference_lsn_int})
    last_known = plan.reference_lsn_int
    if mode == "switchover":
        cluster.router.pause(timeout=pause_timeout)
        record.paused_at, record.paused_epoch = now_iso(), time.time()
        report(f"{cluster.router.describe()} paused: in-flight transactions finished, new ones wait")
        try:
            cluster.control.stop(old, mode="fast")
            cluster.control.fence(old)
            final = cluster.control.checkpoint_lsn(old)
        except (NodeControlError, OSError) as exc:
            cluster.control.unfence(old)
            if not cluster.control.is_running(old):
                cluster.control.start(old)
            cluster.router.resume()
            raise FailoverError(f"could not stop {old} cleanly ({exc}); it was restarted if needed and the entry "
                                f"point resumed: {old} is still the only primary") from exc
        record.final_lsn = final
        report(f"{old} stopped cleanly and fenced (it can only come back as a standby); final checkpoint at {final}")
    else:
        try:
            cluster.router.pause(timeout=2)
            record.paused_at, record.paused_epoch = now_iso(), time.time()
            report(f"{cluster.router.describe()} paused so clients wait for the new primary instead of failing")
        except RouterError as exc:
            report(f"{cluster.router.describe()} could not be paused ({exc}); clients will see errors until the repoint")
        state = cluster.probe(old)
        if state["reachable"] and not state.get("in_recovery", True):
            last_known = max(last_known, lsn_to_int(state.get("current_lsn")))
            record.old_primary_answered = True
        try:
            if old in plan.unreachable:
                raise NodeControlError(f"{old} is in the lost region")
            if cluster.control.is_running(old):
                try:
                    # A clean stop sends the standbys every WAL record it wrote: less to lose.
                    cluster.control.stop(old, mode="fast")
                    report(f"{old} was still running: stopped cleanly (its last WAL went to the standbys)")
                except NodeControlError as exc:
                    cluster.control.stop(old, mode="immediate")
                    report(f"{old} did not stop cleanly ({exc}): stopped (immediate)")
            cluster.control.fence(old)
            record.old_primary_fenced = True
            report(f"{old} fenced: if it comes back it starts as a standby, and the entry point will not lead to it")
        except (NodeControlError, OSError) as exc:
            record.old_primary_fenced = False
            still = cluster.probe(old)
            if still["reachable"] and not still.get("in_recovery", True):
                forced = plan.params.force
                if not forced:
                    cluster.router.resume()
                    raise FailoverError(
                        f"refusing to promote {plan.target}: {old} still accepts writes and could not be stopped "
                        f"or fenced ({exc}); promoting now would make two writable primaries. Stop {old} by hand, "
                        f"or trigger again with force=true (recorded in the audit). {old} is still the only "
                        f"primary") from exc
                record.forced_with_writable_old_primary = True
                report(f"WARNING {old} still accepts writes and could not be fenced ({exc}); force=true: promoting "
                       f"anyway; the repoint keeps the application away from {old}, which must be stopped by hand")
            elif record.paused_at is not None:
                # Unreachable is not gone: behind a partition it may still take writes from clients beside it.
                # The entry point is the fence then: paused now, it leads only to the target after the repoint.
                record.fenced_by_entry_point = True
                report(f"{old} could not be reached to stop or fence it ({exc}): it may be lost or behind a "
                       f"partition; the entry point fences it instead ({cluster.router.describe()} paused now and "
                       f"repointed to {plan.target}: no client reaches {old} through it). {old} must be stopped and "
                       f"rebuilt before it rejoins")
                depose(cluster, plan, record, reason=str(exc))
            elif not plan.params.force:
                raise FailoverError(
                    f"refusing to promote {plan.target}: {old} could not be reached to stop or fence it ({exc}) and "
                    f"the entry point could not be secured either (not paused): behind a partition {old} may still "
                    f"take writes and clients could reach both. Secure one of them, or trigger again with force=true "
                    f"(recorded in the audit). Nothing was changed: {old} is still the recorded primary") from exc
            else:
                record.forced_without_fence = True
                report(f"WARNING {old} could not be reached to stop or fence it ({exc}) and the entry point could not "
                       f"be paused; force=true: promoting anyway. The repoint leads clients to {plan.target}; stop "
                       f"{old} by hand")
    if mode == "failover" and not record.old_primary_answered:
        # What the old primary wrote is known only from the standbys: read them now, after the fence (and the
        # guard's wait), so a commit made after preflight counts too.
        for name in [plan.target, *plan.other_standbys]:
            if name in plan.unreachable:
                continue
            state = cluster.probe(name)
            if state["reachable"] and state.get("in_recovery"):
                last_known = max(last_known, lsn_to_int(state.get("receive_lsn")))
                record.positions_from.append(name)
    record.last_known_primary_lsn_int = last_known
    record.finished_at = now_iso()
    return record


def depose(cluster: ReplicationGroup, plan: FailoverPlan, record: FenceRecord, *, reason: str) -> None:
    """Tell the guard beside an old primary this run could not reach to stop it, and wait until it has."""
    old = plan.old_primary
    if cluster.deposer is None:
        cluster.report(f"no guard runs beside {old} (the policy has no failover.primary_guard): a client that reaches "
                       f"{old} without the entry point could still commit there after the promotion")
        return
    deposer = cluster.deposer
    notice = deposer.notice(node=old, timeline=plan.old_timeline or 0, successor=plan.target,
                            by=f"the failover to {plan.target} planned at {plan.checked_at}", reason=reason)
    took, failed = deposer.board.publish(notice)
    record.deposed_in = took
    if len(took) < deposer.board.quorum:
        why = "; ".join(f"{name}: {error}" for name, error in sorted(failed.items()))
        if not plan.params.force:
            cluster.router.resume()
            raise FailoverError(
                f"refusing to promote {plan.target}: the deposition of {old} reached {len(took)} of "
                f"{len(deposer.board.locations)} storage locations ({why}), fewer than the majority its guard reads, "
                f"so {old} may keep taking writes beside a new primary. Restore storage, or trigger again with "
                f"force=true (recorded in the audit). Nothing was promoted; {cluster.router.describe()} resumed")
        cluster.report(f"WARNING the deposition of {old} reached only {', '.join(took) or 'no location'} ({why}); "
                       f"force=true: promoting after the wait anyway")
    wait = deposer.wait_seconds
    cluster.report(f"{old} deposed in {', '.join(took)}: waiting {wait:.0f}s (the guard's ttl {deposer.ttl:g}s + "
                   f"one poll + {FENCE_MARGIN_SECONDS:g}s) so the guard beside it has stopped it, or it has stopped "
                   f"itself for want of storage, before {plan.target} is promoted")
    time.sleep(wait)
    record.guard_wait_seconds = wait


# -- 3. catch up -------------------------------------------------------------------------------
def replayed_to(cluster: ReplicationGroup, target: str, final_lsn: str) -> tuple[bool, str]:
    replay = cluster.probe(target).get("replay_lsn")
    return lsn_to_int(replay) >= lsn_to_int(final_lsn), replay or "0/0"


def received_position(cluster: ReplicationGroup, target: str) -> int:
    return lsn_to_int(cluster.probe(target).get("receive_lsn"))


# -- 4. promote --------------------------------------------------------------------------------
def promote(cluster: ReplicationGroup, target: str, *, wait_seconds: int = 60,
            previous_timeline: int | None = None) -> PromotionRecord:
    node = cluster.nodes[target]
    state = cluster.probe(target)
    if previous_timeline is not None and state.get("reachable") and not state.get("in_recovery"):
        # A cleared and re-run task: the cluster, not the stale plan, says what is left to do.
        timeline = current_timeline(node)
        if timeline > previous_timeline:
            cluster.report(f"{target} is already writable on timeline {timeline} (was {previous_timeline}): "
                           f"an earlier attempt promoted it; nothing to do")
            return PromotionRecord(promoted_at=now_iso(), timeline=timeline, previous_timeline=previous_timeline,
                                   lsn=node.lsns()["current_lsn"], already_promoted=True)
    before = current_timeline(node)
    started = time.monotonic()
    try:
        ok = node.query_one("SELECT pg_promote(true, %s) AS ok", (wait_seconds,))["ok"]
    except (NodeUnreachable, psycopg.Error) as exc:
        raise FailoverError(f"promotion of {target} failed: {exc}") from exc
    if not ok or node.is_in_recovery():
        raise FailoverError(f"promotion of {target} did not finish within {wait_seconds}s: it is still in recovery")
    after = current_timeline(node)
    if after <= before:
        raise FailoverError(f"{target} left recovery but is still on timeline {after} (was {before})")
    cluster.report(f"{target} promoted in {time.monotonic() - started:.2f}s: writable on timeline {after} (was {before})")
    return PromotionRecord(promoted_at=now_iso(), timeline=after, previous_timeline=before,
                           lsn=node.lsns()["current_lsn"])


# -- 5. repoint --------------------------------------------------------------------------------
def repoint(cluster: ReplicationGroup, target: str) -> RepointRecord:
    endpoint = cluster.endpoints[target]
    cluster.router.point_to(endpoint)
    cluster.router.resume()
    cluster.report(f"{cluster.router.describe()} now leads to {endpoint} and is resumed")
    return RepointRecord(resumed_at=now_iso(), resumed_epoch=time.time(), endpoint=str(endpoint))


# -- 6. rejoin ---------------------------------------------------------------------------------
def rejoin(cluster: ReplicationGroup, plan: FailoverPlan, *, stream_timeout: float = 60) -> RejoinRecord:
    report = cluster.report
    target, old = plan.target, plan.old_primary
    standbys = [n for n in cluster.nodes if n != target]
    cluster.control.ensure_slots(target, standbys)
    result = RejoinRecord()
    for name in plan.unreachable:
        result.needs_rebuild.append(name)
        report(f"{name} is in the lost region: it rejoins when the region is back, rebuilt as a standby of {target}")
    for name in plan.other_standbys:
        if name in plan.unreachable:
            continue
        try:
            cluster.control.follow(name, target)
            result.following.append(name)
            report(f"{name} now follows {target} (new primary_conninfo; it follows the new timeline)")
        except NodeControlError as exc:
            result.needs_rebuild.append(name)
            report(f"{name} could not be repointed ({exc}): it needs attention")
    if old not in plan.unreachable:
        try:
            rebuild_as_standby(cluster, old, target)
            result.following.append(old)
        except (NodeControlError, NodeUnreachable, psycopg.Error) as exc:
            result.needs_rebuild.append(old)
            report(f"{old} could not rejoin ({exc}); it stays stopped and fenced and needs a rebuild from {target}")
    streaming = wait_streaming(cluster, target, result.following, timeout=stream_timeout)
    result.streaming = streaming
    synchronous = synchronous_among(cluster, streaming, also=result.following)
    if not synchronous and any(n.synchronous for n in cluster.policy.topology.nodes if n.name != target):
        # The promoted node keeps accepting writes rather than block on a standby that is not there.
        report("no synchronous standby streams from the new primary yet: it runs asynchronously until one does")
    cluster.control.make_primary_settings(target, synchronous_standbys=synchronous,
                                          quorum=cluster.policy.topology.synchronous_quorum)
    result.synchronous_standbys = synchronous
    report(f"synchronous standbys of {target}: {', '.join(synchronous) or 'none'}")
    return result


def synchronous_among(cluster: ReplicationGroup, streaming: list[str], *, also: list[str]) -> list[str]:
    """The policy's synchronous standbys a primary's commits may wait for: none unless one of them streams (a
    primary never blocks on standbys that are not there); then every one streaming or following it, since
    `ANY n (...)` needs only n of them and one still catching up joins by itself."""
    synchronous = [n.name for n in cluster.policy.topology.nodes if n.synchronous]
    if not any(name in streaming for name in synchronous):
        return []
    return [name for name in synchronous if name in streaming or name in also]


def rebuild_as_standby(cluster: ReplicationGroup, name: str, primary: str) -> str:
    """Make `name` a standby of `primary` whatever it was: stopped, rewound onto the primary's timeline
    (pg_rewind says when nothing diverged), pointed at it and started. Returns pg_rewind's last word."""
    if cluster.control.is_running(name):
        cluster.control.stop(name, mode="fast")
    cluster.nodes[primary].execute("CHECKPOINT")  # pg_rewind reads the new timeline from the control file
    detail = cluster.control.rewind(name, primary)
    cluster.report(f"{name} rewound from {primary}: {detail}")
    cluster.control.follow(name, primary)
    cluster.control.start(name)
    cluster.report(f"{name} restarted as a standby of {primary}")
    return detail


def rebuild_region(cluster: ReplicationGroup, nodes: list[str], *, primary: str,
                   stream_timeout: float = 120) -> RejoinRecord:
    """A lost region is back: each of its nodes rebuilt as a standby of `primary`, then the policy's
    synchronous standbys among those streaming made synchronous again."""
    cluster.control.ensure_slots(primary, [n for n in cluster.nodes if n != primary])
    result = RejoinRecord()
    for name in nodes:
        try:
            rebuild_as_standby(cluster, name, primary)
            result.following.append(name)
        except (NodeControlError, NodeUnreachable, psycopg.Error) as exc:
            result.needs_rebuild.append(name)
            cluster.report(f"{name} could not be rebuilt as a standby of {primary}: {exc}")
    following = [n for n in cluster.nodes if n != primary and n not in result.needs_rebuild]
    result.streaming = wait_streaming(cluster, primary, following, timeout=stream_timeout)
    result.synchronous_standbys = synchronous_among(cluster, result.streaming, also=result.following)
    cluster.control.make_primary_settings(primary, synchronous_standbys=result.synchronous_standbys,
                                          quorum=cluster.policy.topology.synchronous_quorum)
    cluster.report(f"streaming from {primary}: {', '.join(result.streaming) or 'none'}; synchronous: "
                   f"{', '.join(result.synchronous_standbys) or 'none'}")
    return result


def wait_streaming(cluster: ReplicationGroup, primary: str, expected: list[str], *, timeout: float) -> list[str]:
    streaming: list[str] = []

    def all_streaming() -> bool:
        rows = cluster.nodes[primary].replication()
        streaming[:] = sorted(r.application_name for r in rows
                              if r.state == "streaming" and r.application_name in expected)
        return len(streaming) == len(set(expected))

    poll(all_streaming, timeout=timeout, interval=0.3)
    return streaming


# -- 5b. the application tier follows the primary ---------------------------------------------
def move_application(control: Any, *, from_region: str, to_region: str, report: Callable[[str], None],
                     carry_objects: Callable[[], list[Any]] | None = None) -> ApplicationRecord:
    """The requirements' "start DR application services": the target region's Redis becomes the primary,
    its web instances and workers start; then the old region's are stopped and its Redis follows — on a
    best-effort basis, since a lost region may not answer (recorded as notes, never a failure).

    `carry_objects` (going home after a failover): copies what the old region's application wrote to the
    home buckets (`objects.fail_back`); run before the new region starts and again once the old one is
    stopped, for what it wrote in between."""
    if from_region == to_region:
        report(f"the application already serves from {to_region}, the new primary's region: nothing to move")
        return ApplicationRecord(from_region=from_region, to_region=to_region, moved=False)
    carried = carry_objects() if carry_objects is not None else []
    cache = control.promote_cache(to_region)
    report(cache)
    started = control.start_region(to_region)
    report(f"application in {to_region} started: {', '.join(started) or 'already running'}")
    stopped: list[str] = []
    notes: list[str] = []
    try:
        stopped = control.stop_region(from_region)
        report(f"application in {from_region} stopped: {', '.join(stopped) or 'was not running'}")
    except Exception as exc:  # a lost region: what could not be stopped is named, the move stands
        notes.append(f"could not stop the application in {from_region}: {exc}")
    try:
        notes.append(control.follow_cache(from_region, to_region))
    except Exception as exc:
        notes.append(f"Redis in {from_region} not repointed (unreachable?): {exc}; it must follow {to_region}'s "
                     f"before it serves again")
    if carry_objects is not None:
        # Both passes in one record per category; what failed the first time was retried by the second.
        carried = [second.model_copy(update={"copied": first.copied + second.copied,
                                             "already_home": max(0, second.already_home - len(first.copied))})
                   for first, second in zip(carried, carry_objects())]
        for done in carried:
            if done.failed:
                notes.append(f"{len(done.failed)} objects of {done.category} written in {from_region} could not be "
                             f"copied home: {done.failed[0]}; rows naming them fail to read until they are")
    for note in notes:
        report(note)
    return ApplicationRecord(from_region=from_region, to_region=to_region, moved=True, cache=cache, started=started,
                             stopped=stopped, notes=notes, objects_home=[c.model_dump(mode="json") for c in carried])


# -- 7. validate -------------------------------------------------------------------------------
def validate(cluster: ReplicationGroup, plan: FailoverPlan, *, run_id: str, following: list[str] | None = None,
             timeout: float = 60, probe_application: Callable[[], Any] | None = None) -> ValidationRecord:
    report = cluster.report
    target = plan.target
    endpoint = cluster.endpoints[target]
    problems: list[str] = []
    try:
        with psycopg.connect(cluster.app_conninfo, autocommit=True, prepare_threshold=None, connect_timeout=5) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (run_id text, written_at timestamptz "
                         f"DEFAULT clock_timestamp(), server_port int DEFAULT inet_server_port())")
            row = conn.execute(f"INSERT INTO {PROBE_TABLE} (run_id) VALUES (%s) RETURNING server_port", (run_id,)).fetchone()
        port = row[0] if row else None
        if port != endpoint.port:
            problems.append(f"the entry point wrote on port {port}, not on {endpoint}")
        else:
            report(f"ok     a write through the entry point landed on {target}")
    except psycopg.Error as exc:
        problems.append(f"a write through the entry point failed: {str(exc).strip().splitlines()[0]}")
    expected = following if following is not None else [n for n in cluster.nodes if n != target]
    streaming = wait_streaming(cluster, target, expected, timeout=timeout)
    missing = sorted(set(expected) - set(streaming))
    report(f"{'ok    ' if not missing else 'WARN  '} standbys streaming from {target}: {', '.join(streaming) or 'none'}"
           + (f"; not streaming: {', '.join(missing)}" if missing else ""))
    if not streaming and expected:
        problems.append(f"no standby streams from {target}")
    elif not expected:  # the whole region of the other nodes is lost: the primary runs alone until it is back
        report(f"note   no standby to stream from {target}: {', '.join(plan.unreachable) or 'none'} in the lost region")
    timeline = current_timeline(cluster.nodes[target])
    prefix = f"{timeline:08X}"
    cluster.nodes[target].query_one("SELECT pg_switch_wal()::text AS lsn")
    def archived_on_timeline() -> str | None:
        last = cluster.nodes[target].archiver().last_archived_wal
        return last if last and last.startswith(prefix) else None

    archived = poll(archived_on_timeline, timeout=timeout, interval=0.3) \
        or cluster.nodes[target].archiver().last_archived_wal
    if archived and archived.startswith(prefix):
        report(f"ok     WAL archiving works on timeline {timeline}: {archived} archived")
    else:
        problems.append(f"no WAL of timeline {timeline} archived within {timeout:.0f}s (last: {archived})")
    application = None
    if probe_application is not None:
        probe = probe_application()
        application = probe.model_dump(mode="json")
        report(f"{'ok    ' if probe.ok else 'FAILED'} {probe.summary()}")
        if not probe.ok:
            problems.append(f"the application in {probe.region} fails {', '.join(probe.failed_functions)}: "
                            f"{probe.first_failure()}")
    if problems:
        raise FailoverError("validation failed: " + "; ".join(problems))
    return ValidationRecord(validated_at=now_iso(), streaming=streaming, not_streaming=missing, archived_wal=archived,
                            timeline=timeline, application=application)


# -- rollback ----------------------------------------------------------------------------------
def rollback(cluster: ReplicationGroup, plan: FailoverPlan, *, fenced: bool, promoted: bool,
             repointed: bool = False, failed_step: str | None = None) -> RollbackRecord:
    """After a failed step: before the repoint, a switchover puts the old primary back and a failover
    leaves exactly one writer; after it, nothing goes back (clients may have written to the new primary).
    Writability is checked on every node rollback can reach; the ones it cannot are named, never counted as
    not writable (behind a partition a primary looks exactly like a lost one)."""
    record = _roll_back(cluster, plan, fenced=fenced, promoted=promoted, repointed=repointed,
                        failed_step=failed_step)
    unreachable = [name for name in cluster.nodes if not cluster.probe(name).get("reachable")]
    if unreachable:
        note = (f"; could not reach {', '.join(unreachable)} to check whether it accepts writes: check "
                f"{'it' if len(unreachable) == 1 else 'them'} by hand (a partition hides a primary as well as a "
                f"lost node does)")
        cluster.report(f"rollback could not reach {', '.join(unreachable)}: its verdict covers only the other nodes")
        record = record.model_copy(update={"unreachable": unreachable, "message": record.message + note})
    return record


def _roll_back(cluster: ReplicationGroup, plan: FailoverPlan, *, fenced: bool, promoted: bool,
               repointed: bool, failed_step: str | None) -> RollbackRecord:
    report = cluster.report
    old, target = plan.old_primary, plan.target
    if plan.action in ("switchover", "failover"):
        # A worker lost in the middle of a step leaves no record of it (the record is pushed once the step
        # is done): what the nodes say now decides, never only the records.
        writable = cluster.writable_nodes()
        if not fenced and old not in writable:
            report(f"{old} no longer accepts writes although no fence was recorded (the step was interrupted): "
                   f"rolling back as from a fence")
            fenced = True
        if not promoted and target in writable:
            report(f"{target} accepts writes although no promotion was recorded (the step was interrupted)")
            promoted = True
    if repointed and promoted:
        return _fail_forward(cluster, plan, failed_step=failed_step)
    if plan.action not in ("switchover", "failover") or not fenced:
        writable = cluster.writable_nodes()
        cluster.router.resume()
        return RollbackRecord(rolled_back=False, writable=writable,
                              message=f"nothing had changed; writable primary: {', '.join(writable) or 'none'}")
    if plan.action == "switchover":
        if promoted and cluster.control.is_running(target):
            cluster.control.stop(target, mode="fast")
            cluster.control.fence(target)
            report(f"{target} had been promoted: stopped and fenced; it needs a rebuild from {old} before it rejoins")
        cluster.control.unfence(old)
        cluster.control.make_primary_settings(old, synchronous_standbys=[])
        if not cluster.control.is_running(old):
            cluster.control.start(old)
        cluster.router.point_to(cluster.endpoints[old])
        cluster.router.resume()
        writable = cluster.writable_nodes()
        if writable != [old]:
            raise FailoverError(f"rollback left writable nodes {writable or 'none'}; expected only {old}")
        synchronous = [n.name for n in cluster.policy.topology.nodes if n.synchronous and n.name != old]
        streaming = wait_streaming(cluster, old, synchronous, timeout=30)
        cluster.control.make_primary_settings(old, synchronous_standbys=synchronous_among(cluster, streaming,
                                                                                          also=synchronous),
                                              quorum=cluster.policy.topology.synchronous_quorum)
        message = (f"switchover rolled back: the original primary {old} is serving writes again through "
                   f"{cluster.router.describe()}")
        report(message)
        return RollbackRecord(rolled_back=True, writable=writable, message=message)
    writable = cluster.writable_nodes()
    if target in writable and old not in writable:
        # The old primary must not come back writable beside the new one (a fence may not have been reached).
        try:
            if not cluster.control.is_fenced(old):
                cluster.control.fence(old)
                report(f"{old} fenced: it can only come back as a standby of {target}")
        except NodeControlError as exc:
            report(f"{old} could not be fenced ({exc}): fence it before its host comes back")
    if len(writable) > 1 and target in writable:
        for name in writable:
            if name != target:
                cluster.control.stop(name, mode="immediate")
                cluster.control.fence(name)
                report(f"{name} was also writable: stopped and fenced")
        writable = cluster.writable_nodes()
    cluster.router.resume()
    if len(writable) == 1:
        message = f"failover stopped with exactly one writable primary: {writable[0]}"
    else:
        message = (f"failover stopped with no writable primary: {old} is lost and {target} was not promoted; "
                   f"fix the cause and trigger dr_failover again")
    report(message)
    return RollbackRecord(rolled_back=False, writable=writable, message=message)


def _fail_forward(cluster: ReplicationGroup, plan: FailoverPlan, *, failed_step: str | None) -> RollbackRecord:
    """Keep the new primary: rolling back would throw away what clients committed on it since the repoint."""
    old, target = plan.old_primary, plan.target
    writable = cluster.writable_nodes()
    for name in writable:
        if name != target:
            cluster.control.stop(name, mode="immediate")
            cluster.control.fence(name)
            cluster.report(f"{name} was also writable: stopped and fenced")
    writable = cluster.writable_nodes()
    cluster.router.resume()
    step = failed_step or "a step after the repoint"
    if writable == [target]:
        message = (f"failing forward: {step} failed after the application was repointed to {target}, which may "
                   f"already hold new commits, so it stays the primary (nothing was rolled back); fix what "
                   f"{step} reported, then make the other nodes follow {target} ({old} needs pg_rewind or a "
                   f"rebuild from {target} before it rejoins)")
    else:
        message = (f"failing forward after {step}: expected {target} to be the only writable node but found "
                   f"{', '.join(writable) or 'none'}; the entry point leads to {target}: check it by hand")
    cluster.report(message)
    return RollbackRecord(rolled_back=False, failed_forward=True, writable=writable, message=message)


# -- all steps in one call (drill, benchmark, CLI) ---------------------------------------------
StepT = TypeVar("StepT", bound=StepRecord)


def wait_caught_up(cluster: ReplicationGroup, plan: FailoverPlan, fenced: FenceRecord, *, timeout: float = 60,
                   settle_seconds: float = 2.0, interval: float = 0.2) -> CatchUpRecord:
    """Replay to the final LSN (switchover), or until the received WAL stops advancing (failover), with the
    data loss estimate."""
    target = plan.target
    last: list[tuple[int, float]] = []  # the received position and when it last moved

    def caught_up() -> CatchUpRecord | None:
        if plan.action == "switchover":
            done, replay = replayed_to(cluster, target, fenced.final_lsn or "0/0")
            if done:
                cluster.report(f"{target} replayed to {replay}, past the final LSN {fenced.final_lsn}")
                return CatchUpRecord(replayed_lsn=replay, data_loss_bytes=0)
            return None
        received, now = received_position(cluster, target), time.monotonic()
        if not last or received != last[0][0]:
            last[:] = [(received, now)]
            return None
        if now - last[0][1] < settle_seconds:
            return None
        loss = max(0, fenced.last_known_primary_lsn_int - received)
        cluster.report(f"{target} stopped receiving; data loss estimate {loss:,} bytes")
        return CatchUpRecord(received_lsn_int=received, data_loss_bytes=loss)

    record = poll(caught_up, timeout=timeout, interval=interval)
    if record is None:
        raise FailoverError(f"{target} did not catch up within {timeout:.0f}s")
    return record


def timed(run: Callable[[], StepT]) -> StepT:
    """A step's record with its duration and start and finish times."""
    started, began = now_iso(), time.monotonic()
    record = run()
    record.seconds = round(time.monotonic() - began, 3)
    record.step_started_at, record.step_finished_at = started, now_iso()
    return record


# The steps between the entry point's pause (in fence, for a switchover) and its resume (in repoint): one
# task of dr_failover runs them, so no scheduler round trip lengthens the outage.
CUT_OVER_STEPS = ("fence", "catch_up", "promote", "repoint")


class CutOverFailed(FailoverError):
    """A step of the cut-over failed: `step` names it; `records` holds what the steps before it did."""

    def __init__(self, step: str, cause: Exception, records: FailoverRecords) -> None:
        super().__init__(f"{step}: {cause}")
        self.step, self.records = step, records


def cut_over(cluster: ReplicationGroup, plan: FailoverPlan, *, catch_up_timeout: float | None = None,
             done: Callable[[str, StepRecord], None] = lambda _step, _record: None,
             promoted: Callable[[PromotionRecord], None] = lambda _record: None) -> FailoverRecords:
    """Fence, catch-up, promote and repoint in one go (switchover: the entry point paused in fence, resumed in
    repoint). `done(step, record)` after each step: the caller records it at once, so a process killed
    midway leaves what was done known to the rollback; `promoted` right after the promotion (the new
    topology is recorded before the repoint). Raises CutOverFailed naming the step."""
    records = FailoverRecords(preflight=plan)
    timeout = catch_up_timeout or cluster.policy.failover.catch_up_timeout.total_seconds()
    step = "fence"

    def run(name: str, attribute: str, action: Callable[[], StepT]) -> StepT:
        nonlocal step
        step = name
        record = timed(action)
        setattr(records, attribute, record)
        if name == "promote":
            promoted(record)  # type: ignore[arg-type]
        done(name, record)
        return record

    try:
        fenced = run("fence", "fence", lambda: fence(cluster, plan))
        run("catch_up", "catch_up", lambda: wait_caught_up(cluster, plan, fenced, timeout=timeout))
        run("promote", "promote", lambda: promote(cluster, plan.target, previous_timeline=plan.old_timeline))
        run("repoint", "repoint", lambda: repoint(cluster, plan.target))
    except Exception as exc:
        raise CutOverFailed(step, exc, records) from exc
    return records


@dataclass
class Completed:
    """What run_all did: every step's record and, after a promotion, the new topology."""

    records: FailoverRecords
    topology: TopologyRecord | None = None

    @property
    def unavailability_seconds(self) -> float | None:
        return self.records.unavailability_seconds


def run_all(cluster: ReplicationGroup, params: FailoverParams, *, primary: str, run_id: str,
            recorded: TopologyRecord | None = None, catch_up_timeout: float | None = None,
            services: Any | None = None, probe_application: Callable[[], Any] | None = None,
            unreachable: Collection[str] = (), carry_objects: Callable[[], list[Any]] | None = None) -> Completed:
    """Every step in order, rolling back on failure; returns each step's record (as the DAG's audit).

    `services` (a ServiceControl) moves the application tier with the primary; `probe_application`
    runs the new region's synthetic transactions in the validation."""
    plan = preflight(cluster, params, primary=primary, run_id=run_id, recorded=recorded, unreachable=unreachable)
    records = FailoverRecords(preflight=plan)
    if plan.action == "none" or plan.dry_run:
        return Completed(records=records)
    step = "fence"

    def keep(name: str, record: StepRecord) -> None:
        setattr(records, _STEP_ATTRIBUTES[name], record)

    try:
        cut_over(cluster, plan, catch_up_timeout=catch_up_timeout, done=keep)
        if services is not None:
            step, topology = "start_application", cluster.policy.topology
            records.start_application = timed(lambda: move_application(
                services, from_region=topology.node(plan.old_primary).region,
                to_region=topology.node(plan.target).region, report=cluster.report, carry_objects=carry_objects))
        step = "rejoin"
        records.rejoin = timed(lambda: rejoin(cluster, plan))
        step = "validate"
        records.validation = timed(lambda: validate(
            cluster, plan, run_id=run_id, following=records.rejoin.following, probe_application=probe_application))
    except Exception as exc:
        cause = exc.__cause__ or exc if isinstance(exc, CutOverFailed) else exc
        step = exc.step if isinstance(exc, CutOverFailed) else step
        records.rollback = rollback(cluster, plan, fenced=records.fence is not None,
                                    promoted=records.promote is not None, repointed=records.repoint is not None,
                                    failed_step=step)
        raise FailoverError(f"{plan.action} to {plan.target} failed: {cause}; {records.rollback.message}") from cause
    return Completed(records=records, topology=topology_record(plan=plan, promotion=records.promote,
                                                               rejoin_result=records.rejoin, run_id=run_id))
