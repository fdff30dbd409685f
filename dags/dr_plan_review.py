"""
### dr_plan_review — the yearly review of the recovery plan (and on demand)

1. `draft_review` compares the policy with what was measured in the last year: per business
   function, the RTO and RPO each drill measured (worst of the year against the target: met,
   missed, or never measured), the incidents with their measured downtime and cost (the policy's
   downtime table), and whether the plan is overdue for review (`plan_review.every`, one year): an
   overdue plan is an alarm (logged, and a `dr_incident` cause). The draft goes to `reviews/` in
   every required location as JSON and Markdown.
2. `confirm_targets` (human-in-the-loop, the policy's `plan_review.owners`): the form holds every
   function's current targets; keep them and confirm, or change them and request the changes.
   The answer, who gave it and the changes requested are written beside the draft
   (`reviews/<id>-decision.json`); the plan counts as reviewed from then on. Changes are applied to
   `include/policy.yaml` by its owners (the policy is versioned with the project).
"""

from __future__ import annotations

from airflow.sdk import DAG

from continuity.alerts.callbacks import report_failed_task
from continuity.dag_defaults import DEFAULT_ARGS, START_DATE
from continuity.operators.plan_review import ConfirmTargetsOperator, DraftPlanReviewOperator
from continuity.policy.loading import load_policy

with DAG(
    dag_id="dr_plan_review",
    description="Yearly review of the recovery plan against the year's measurements; owners confirm targets",
    doc_md=__doc__,
    schedule=load_policy().schedule_for("dr_plan_review"),  # include/policy.yaml is the one source
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "on_failure_callback": report_failed_task},
    tags=["continuity", "review"],
) as dag:
    DraftPlanReviewOperator(task_id="draft_review") >> ConfirmTargetsOperator(task_id="confirm_targets")
