"""The yearly review of the plan: what the policy promises against what was measured during the year.

The draft takes, per business function, the recovery times and data loss the drills measured (their
stored reports), the incidents of the year with their measured downtime and cost, and says for each
target: met, missed, or never measured. The owners' answer (confirm or change each function's targets)
is recorded with who gave it; the plan counts as reviewed from then on. Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict

from continuity.incidents.communication import downtime_cost
from continuity.incidents.records import Incident
from continuity.policy.model import Policy, format_duration
from continuity.reports import store_report
from continuity.storage.locations import StorageLocation, stored_documents

DRILL_PREFIX = "reports/drill/"
REVIEW_PREFIX = "reviews/"
Verdict = Literal["met", "missed", "not measured"]


class Measurement(BaseModel):
    seconds: float
    source: str
    at: str


class FunctionReview(BaseModel):
    model_config = ConfigDict(extra="forbid")

    function: str
    title: str
    rto_target: str
    rpo_target: str
    rto_measured: list[Measurement]
    rpo_measured: list[Measurement]
    rto_verdict: Verdict
    rpo_verdict: Verdict
    not_measured: list[str]  # what the measurements do not cover (dependencies no drill exercises)


class PlanReview(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["plan-review"] = "plan-review"
    review_id: str
    period_start: datetime
    period_end: datetime
    last_reviewed: str | None
    reviewed_by: str | None
    overdue: bool
    functions: list[FunctionReview]
    never_measured: list[str]
    targets_missed: list[str]
    drills: int
    region_recovery: str  # the newest quarterly region-loss exercise of the period, or `not measured`
    incidents: int
    incident_downtime_seconds: float
    incident_cost: str


class ReviewDecision(BaseModel):
    """The owners' answer, as given in the Airflow UI."""

    model_config = ConfigDict(extra="forbid")

    review_id: str
    outcome: Literal["confirmed", "changes requested", "not answered"]
    decided_by: str | None
    decided_at: datetime
    changes: dict[str, dict[str, str]]  # function -> {"rto_target": new, "rpo_target": new} as requested
    notes: str = ""


def _drill_reports(locations: Sequence[StorageLocation], start: datetime, end: datetime) -> list[dict]:
    # The switchover leg's report (`<id>-switchover.json`) has its own shape: only drill results count.
    return sorted((r for r in stored_documents(locations, DRILL_PREFIX) if r.get("kind") == "drill"
                   and "started_at" in r and start <= datetime.fromisoformat(r["started_at"]) <= end),
                  key=lambda r: r["started_at"])


def region_recovery_line(locations: Sequence[StorageLocation], start: datetime, end: datetime) -> str:
    """The newest region-loss exercise of the period, in one line from its stored report."""
    from continuity.exercises.region_recovery import REPORT_PREFIX as RECOVERY_PREFIX

    exercises = sorted((r for r in stored_documents(locations, RECOVERY_PREFIX) if r.get("kind") == "region-recovery"
                        and "started_at" in r and start <= datetime.fromisoformat(r["started_at"]) <= end),
                       key=lambda r: r["started_at"])
    if not exercises:
        return "not measured (no region-loss exercise in the period)"
    newest = exercises[-1]
    missed = [o["objective"] for o in newest.get("objectives", []) if o.get("verdict") not in ("pass", "not measured")]
    downtime = newest.get("downtime_seconds")
    back = f"every function back in {downtime:.1f} s" if downtime is not None else "recovery not measured"
    outcome = (f"failed: {newest['error']}" if newest.get("error") else
               f"{len(missed)} objective(s) missed ({', '.join(missed)})" if missed else "every objective met")
    found = {True: "left as found", False: "NOT left as found", None: "return not checked"}[newest.get("left_as_found")]
    return (f"exercise {newest['exercise_id']} on {newest['started_at'][:10]} ({len(exercises)} in the period): "
            f"{newest.get('region')} lost, {back}; {outcome}; {found}")


def reviews(locations: Sequence[StorageLocation]) -> list[ReviewDecision]:
    return sorted((ReviewDecision.model_validate(d) for d in stored_documents(locations, REVIEW_PREFIX)
                   if d.get("review_id") and "outcome" in d), key=lambda d: d.decided_at)


def last_review(policy: Policy, decisions: Sequence[ReviewDecision]) -> tuple[datetime | None, str | None]:
    """When the plan was last reviewed and by whom: an answered review decision, else what the policy says."""
    answered = [d for d in decisions if d.outcome != "not answered"]
    if answered:
        return answered[-1].decided_at, answered[-1].decided_by
    review = policy.plan_review
    if review is None or review.last_reviewed is None:
        return None, None
    return datetime.combine(review.last_reviewed, datetime.min.time(), tzinfo=timezone.utc), review.reviewed_by


def overdue_alarm(policy: Policy, decisions: Sequence[ReviewDecision], *, now: datetime) -> str | None:
    when, by = last_review(policy, decisions)
    every = policy.plan_review.every if policy.plan_review else timedelta(days=365)
    if when is None or now - when > every:
        return (f"the recovery plan has not been reviewed within {format_duration(every)} (last: "
                f"{f'{when:%Y-%m-%d} by {by}' if when else 'never'}): run dr_plan_review")
    return None


def _verdict(measured: list[Measurement], target: timedelta) -> Verdict:
    if not measured:
        return "not measured"
    return "met" if max(m.seconds for m in measured) <= target.total_seconds() else "missed"


def draft(policy: Policy, locations: Sequence[StorageLocation], incidents: Sequence[Incident], *,
          review_id: str, now: datetime | None = None) -> PlanReview:
    now = now or datetime.now(timezone.utc)
    start = now - timedelta(days=365)
    drills = _drill_reports(locations, start, now)
    decisions = reviews(locations)
    when, by = last_review(policy, decisions)
    functions = []
    for name, function in sorted(policy.business_functions.items()):
        rto: list[Measurement] = []
        rpo: list[Measurement] = []
        for report in drills:
            for line in report.get("objectives", []):
                if line.get("function") != name or line.get("measured_seconds") is None:
                    continue
                measurement = Measurement(seconds=line["measured_seconds"], at=report["started_at"][:10],
                                          source=f"drill {report['drill_id']}: {line.get('source') or ''}"[:300])
                (rto if line["objective"].startswith("RTO") else rpo).append(measurement)
        functions.append(FunctionReview(
            function=name, title=function.title, rto_target=format_duration(function.rto.target),
            rpo_target=format_duration(function.rpo.target), rto_measured=rto, rpo_measured=rpo,
            rto_verdict=_verdict(rto, function.rto.target), rpo_verdict=_verdict(rpo, function.rpo.target),
            not_measured=policy.unmeasured_dependencies(name)))
    year = [i for i in incidents if i.kind == "incident" and start <= i.opened_at <= now]
    downtime = sum(((i.resolved_at or now) - i.opened_at).total_seconds() for i in year)
    return PlanReview(
        review_id=review_id, period_start=start, period_end=now,
        last_reviewed=f"{when:%Y-%m-%d}" if when else None, reviewed_by=by,
        overdue=overdue_alarm(policy, decisions, now=now) is not None, functions=functions,
        never_measured=[f.function for f in functions if f.rto_verdict == "not measured" and f.rpo_verdict == "not measured"],
        targets_missed=[f"{f.function} {kind}" for f in functions for kind, verdict in
                        (("RTO", f.rto_verdict), ("RPO", f.rpo_verdict)) if verdict == "missed"],
        drills=len(drills), region_recovery=region_recovery_line(locations, start, now), incidents=len(year),
        incident_downtime_seconds=round(downtime, 1),
        incident_cost=downtime_cost(policy, timedelta(seconds=downtime)) if year else "$0 (no incident)")


def render_markdown(review: PlanReview) -> str:
    lines = [f"# Recovery plan review {review.review_id}", "",
             f"- period: {review.period_start:%Y-%m-%d} to {review.period_end:%Y-%m-%d}",
             f"- last reviewed: {review.last_reviewed or 'never'}{f' by {review.reviewed_by}' if review.reviewed_by else ''}"
             f"{' — OVERDUE' if review.overdue else ''}",
             f"- drills in the period: {review.drills}; region recovery: {review.region_recovery}",
             f"- incidents: {review.incidents}, downtime {format_duration(timedelta(seconds=review.incident_downtime_seconds))}, "
             f"cost {review.incident_cost}", "",
             "| business function | RTO target | worst measured RTO | verdict | RPO target | worst measured RPO | verdict | not measured |",
             "|---|---|---|---|---|---|---|---|"]
    for f in review.functions:
        worst_rto = f"{max(m.seconds for m in f.rto_measured):.1f} s" if f.rto_measured else "—"
        worst_rpo = f"{max(m.seconds for m in f.rpo_measured):.1f} s" if f.rpo_measured else "—"
        lines.append(f"| {f.function} | {f.rto_target} | {worst_rto} | {f.rto_verdict} | {f.rpo_target} | {worst_rpo} "
                     f"| {f.rpo_verdict} | {', '.join(f.not_measured) or '—'} |")
    lines += ["", f"Targets missed: {', '.join(review.targets_missed) or 'none'}.",
              f"Never measured: {', '.join(review.never_measured) or 'none'}."]
    return "\n".join(lines) + "\n"


def store(locations: Sequence[StorageLocation], review: PlanReview, decision: ReviewDecision | None = None) -> list[str]:
    written = store_report(review, locations, name=review.review_id, prefix=REVIEW_PREFIX, render=render_markdown)
    if decision is not None:
        store_report(decision, locations, name=f"{review.review_id}-decision", prefix=REVIEW_PREFIX)
    return written
