"""Operators of dr_plan_review: draft the yearly review from what was measured, ask the owners to
confirm or change each business function's targets, record their answer."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Context, Param
from airflow.sdk.exceptions import AirflowFailException

from continuity.exercises import plan_review
from continuity.hooks.incident import ContinuityIncidentHook
from continuity.operators.base import ContinuityOperator
from continuity.policy.model import format_duration, parse_duration
from continuity.policy.loading import load_policy
from continuity.storage.locations import key_safe


def _review_id(context: Context) -> str:
    return key_safe(f"{datetime.now(timezone.utc):%Y}-{context['run_id']}")


class DraftPlanReviewOperator(ContinuityOperator):
    """Compare the policy with the year's drill measurements and incidents; write the draft (JSON +
    Markdown) to `reviews/` in every required location. An overdue review is logged as an alarm and
    reported as an incident cause."""

    def execute(self, context: Context) -> dict[str, Any]:
        hook = ContinuityIncidentHook(policy_path=self.policy_path)
        locations = hook.incident_locations()
        review = plan_review.draft(hook.policy, locations, hook.get_store().all_incidents(),
                                   review_id=_review_id(context))
        for key in plan_review.store(locations, review):
            self.log.info("draft written to %s", key)
        for function in review.functions:
            self.log.info("%s: RTO target %s: %s (%d measurements); RPO target %s: %s (%d measurements)",
                          function.function, function.rto_target, function.rto_verdict, len(function.rto_measured),
                          function.rpo_target, function.rpo_verdict, len(function.rpo_measured))
        alarm = plan_review.overdue_alarm(hook.policy, plan_review.reviews(locations), now=datetime.now(timezone.utc))
        if alarm:
            from continuity.alerts.callbacks import report_cause
            from continuity.incidents.records import IncidentRequest

            self.log.error("ALARM: %s", alarm)
            report_cause(IncidentRequest(severity="medium", title="Recovery plan review overdue", description=alarm,
                                         cause_key="plan-review-overdue", source=f"dr_plan_review run {context['run_id']}"))
        return review.model_dump(mode="json")


def _target_params() -> dict[str, Param]:
    policy = load_policy()
    params: dict[str, Param] = {}
    for name, function in sorted(policy.business_functions.items()):
        params[f"{name}__rto_target"] = Param(format_duration(function.rto.target), type="string",
                                              title=f"{function.title}: RTO target")
        params[f"{name}__rpo_target"] = Param(format_duration(function.rpo.target), type="string",
                                              title=f"{function.title}: RPO target")
    params["notes"] = Param("", type="string", title="Notes")
    return params


def _reminders() -> list[Any]:
    """The e-mail telling management (the policy's communication matrix) that the review awaits them."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    communication = load_policy().communication
    if communication is None or "management" not in communication.audiences:
        return []
    recipients = communication.audiences["management"].recipients.get("email", [])
    return [SmtpNotifier(to=recipients, from_email=communication.from_email, smtp_conn_id=communication.connections["email"],
                         subject="Recovery plan review {{ run_id }} awaits your answer",
                         html_content="<p>The yearly review of the recovery plan is drafted. Confirm or change each "
                                      "business function's targets in the Airflow UI (Required Actions, DAG "
                                      "dr_plan_review, run {{ run_id }}).</p>")] if recipients else []


class ConfirmTargetsOperator(HITLOperator):
    """The owners confirm each business function's RTO and RPO targets or change them (the form holds
    the current ones); the answer, who gave it and the changes requested are recorded beside the draft.
    No answer in time is recorded as `not answered` (the plan stays unreviewed)."""

    CONFIRM = "Confirm targets"
    CHANGE = "Request the changes entered"

    def __init__(self, *, draft_task_id: str = "draft_review", **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's params: this form has its own
        review = load_policy().plan_review
        super().__init__(subject="Review the recovery plan's targets",
                         body="{{ ti.xcom_pull(task_ids='" + draft_task_id + "')['review_id'] }}",
                         options=[self.CONFIRM, self.CHANGE], defaults=[self.CONFIRM], params=_target_params(),
                         notifiers=_reminders(),
                         assigned_users=[{"id": u, "name": u} for u in (review.owners if review else [])] or None,
                         response_timeout=kwargs.pop("response_timeout", None) or timedelta(days=14), **kwargs)
        self.draft_task_id = draft_task_id

    def execute(self, context: Context) -> Any:
        review = plan_review.PlanReview.model_validate(context["ti"].xcom_pull(task_ids=self.draft_task_id))
        self.body = (f"Review {review.review_id}. Keep or change each target, then choose.\n\n"
                     + plan_review.render_markdown(review))
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        policy = load_policy()
        review = plan_review.PlanReview.model_validate(context["ti"].xcom_pull(task_ids=self.draft_task_id))
        answers = dict(result.get("params_input") or {})
        by = (result.get("responded_by_user") or {}).get("name")
        changes: dict[str, dict[str, str]] = {}
        for name, function in sorted(policy.business_functions.items()):
            for kind, current in (("rto_target", function.rto.target), ("rpo_target", function.rpo.target)):
                value = str(answers.get(f"{name}__{kind}", format_duration(current))).strip()
                try:
                    wanted = parse_duration(value)
                except ValueError as exc:
                    raise AirflowFailException(f"{name}__{kind}: {exc}; nothing was recorded, run the review "
                                               f"again") from None
                if wanted != current:
                    changes.setdefault(name, {})[kind] = format_duration(wanted)
        outcome = "not answered" if not by else "changes requested" if changes or \
            result["chosen_options"] == [self.CHANGE] else "confirmed"
        decision = plan_review.ReviewDecision(review_id=review.review_id, outcome=outcome, decided_by=by,
                                              decided_at=datetime.now(timezone.utc), changes=changes,
                                              notes=str(answers.get("notes") or ""))
        hook = ContinuityIncidentHook()
        for key in plan_review.store(hook.incident_locations(), review, decision):
            self.log.info("review and decision written to %s", key)
        self.log.info("plan review %s: %s%s%s", review.review_id, outcome, f" by {by}" if by else "",
                      f"; changes requested: {changes} (apply them to include/policy.yaml)" if changes else "")
        return decision.model_dump(mode="json")
