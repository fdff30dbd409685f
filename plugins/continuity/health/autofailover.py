"""The automatic failover's decision: from one health assessment and what is known about the streak, the DR
standbys, the primary's own region and the standbys' second opinion, whether to trigger dr_failover and why.

A pure function of a typed snapshot (the operator gathers it, stores the streak and triggers): each branch
returns a decision with its reason sentence, the streak to keep and, where people must hear of it, an alert.
The evidence that costs a round trip (probing the DR standbys, reading the viewpoints, asking the standbys
whether they still hear the primary) is asked for only when the decision gets that far, in that order, so
a healthy check touches no node.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from continuity.health.checks import primary_failing
from continuity.postgres.node import lsn_to_int

STREAK_VARIABLE = "continuity_disaster_streak"


class DisasterStreak(BaseModel):
    """Consecutive disaster assessments in which the primary itself failed (the Variable `continuity_disaster_streak`)."""

    model_config = ConfigDict(extra="ignore")

    count: int = 0
    since: str | None = None
    last_run: str | None = None
    triggered_by: str | None = None

    @classmethod
    def parse(cls, raw: str | None, *, warn: Callable[[str], None] | None = None) -> DisasterStreak:
        """The stored streak; a missing one is a fresh start, and so is one that does not parse (said through
        `warn`): counting again from zero delays a failover by a few checks, never causes one."""
        if not raw:
            return cls()
        try:
            return cls.model_validate(json.loads(raw))
        except (ValueError, ValidationError) as exc:
            if warn:
                warn(f"{STREAK_VARIABLE} is not a streak ({str(exc).splitlines()[0]}): counting from zero")
            return cls()

    def dumps(self) -> str:
        return self.model_dump_json(exclude_none=True)


class StandbyCandidate(BaseModel):
    """A DR-region standby as probed for an automatic failover."""

    model_config = ConfigDict(extra="forbid")

    reachable: bool
    in_recovery: bool = False
    receive_lsn: str | None = None
    error: str | None = None


class ViewpointVerdict(BaseModel):
    """The primary's own region's view (for the run's reason) and, when it saw the primary writable lately,
    the partition veto's sentence."""

    primary_view: str
    partition: str | None = None


class AutoFailoverDecision(BaseModel):
    """What the operator does: trigger dr_failover to `target`, or skip saying `reason`. `streak` is what to
    store (None: leave the stored one as it is); `alert` is for people (logged as an ALERT), `notes` are
    progress lines for the task log."""

    trigger: bool
    reason: str
    streak: DisasterStreak | None = None
    target: str | None = None
    alert: str | None = None
    notes: list[str] = []


def choose_target(candidates: Mapping[str, StandbyCandidate]) -> str | None:
    """The healthy standby (reachable, in recovery) that has received the most WAL."""
    healthy = {name: state for name, state in candidates.items() if state.reachable and state.in_recovery}
    if not healthy:
        return None
    return max(sorted(healthy), key=lambda name: lsn_to_int(healthy[name].receive_lsn))


def decide_auto_failover(*, enabled: bool, consecutive_failures: int, dr_region: str,
                         assessment: Mapping[str, Any] | None, streak: DisasterStreak, rounds: int, run_id: str,
                         probe_candidates: Callable[[], Mapping[str, StandbyCandidate]],
                         read_viewpoints: Callable[[], ViewpointVerdict],
                         primary_seen_alive: Callable[[], str | None]) -> AutoFailoverDecision:
    """Whether this health check triggers an automatic failover. `rounds` is the disaster streak the probe
    rounds' trigger saw (0 when a schedule started the run); the three callables are asked, in order, only
    when the decision needs them."""
    if not enabled:
        return AutoFailoverDecision(trigger=False, reason="automatic failover is off (health_monitor.auto_failover: false)")
    if assessment is None:
        return AutoFailoverDecision(trigger=False,
                                    reason="the assessment did not report: no automatic decision this time")
    notes: list[str] = []
    if not assessment.get("disaster"):
        if streak.count:
            notes.append(f"no disaster this check: the streak of {streak.count} ends")
        return AutoFailoverDecision(trigger=False, reason="no disaster: nothing to do", streak=DisasterStreak(),
                                    notes=notes)
    if not primary_failing(assessment):
        # e.g. a standby down (network, 2) plus a bucket gone (storage, 1): a disaster to alert on, but promoting
        # a standby while the primary accepts writes would make two primaries.
        return AutoFailoverDecision(
            trigger=False, streak=DisasterStreak(),
            alert=f"disaster threshold reached ({assessment.get('summary', '')}) while the primary itself passes "
                  f"its check",
            reason="disaster alert without promotion: the primary itself answers and accepts writes; automatic "
                   "failover needs the primary failing")
    counted = DisasterStreak(count=max(streak.count + 1, rounds), last_run=run_id, since=streak.since or run_id)
    if rounds:
        notes.append(f"started by the probe rounds: the disaster held for {rounds} consecutive 30-second rounds")
    if counted.count < consecutive_failures:
        return AutoFailoverDecision(
            trigger=False, streak=counted, notes=notes,
            reason=f"disaster threshold reached {counted.count} time(s) in a row; automatic failover waits for "
                   f"{consecutive_failures} (flap protection)")
    candidates = probe_candidates()
    target = choose_target(candidates)
    if target is None:
        described = {name: state.model_dump(exclude_none=True) for name, state in candidates.items()}
        return AutoFailoverDecision(
            trigger=False, streak=counted, notes=notes,
            reason=f"disaster for {counted.count} checks but no healthy standby in the DR region {dr_region} to "
                   f"fail over to: {described}")
    views = read_viewpoints()
    if views.partition:
        # The streak is kept: if the primary did go down, that region's next observation says so (or it falls
        # silent) and the next check fails over without counting again.
        return AutoFailoverDecision(trigger=False, streak=counted, notes=notes,
                                    alert=f"the monitor cannot reach the primary, but {views.partition}",
                                    reason=f"no automatic failover: {views.partition}")
    alive = primary_seen_alive()
    if alive:
        return AutoFailoverDecision(trigger=False, streak=DisasterStreak(), notes=notes,
                                    alert=f"the monitor cannot reach the primary, but {alive}",
                                    reason=f"no automatic failover: {alive}")
    notes.append("confirmed from the standbys' side: none hears from the primary")
    notes.append(f"triggering dr_failover: failover to {target} after {counted.count} consecutive disaster checks")
    return AutoFailoverDecision(
        trigger=True, target=target, notes=notes, streak=DisasterStreak(triggered_by=run_id),
        reason=f"automatic: disaster threshold held for {counted.count} consecutive checks; viewpoint "
               f"{views.primary_view} ({assessment.get('summary', '')})"[:500])
