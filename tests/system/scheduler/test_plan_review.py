"""dr_plan_review under the real scheduler: the draft's table comes from the stored drill reports and the
year's incidents; the owners' answer, given through the REST API, is recorded with who gave it."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from continuity.exercises.drill import DrillResult, render_markdown as render_drill
from continuity_lab.receivers import mails, message_text
from continuity.reports import function_rto_objectives, store_report
from continuity.waiting import poll

DAG = "dr_plan_review"


def _current_targets(policy) -> dict[str, str]:
    from continuity.policy.model import format_duration

    form = {}
    for name, function in policy.business_functions.items():
        form[f"{name}__rto_target"] = format_duration(function.rto.target)
        form[f"{name}__rpo_target"] = format_duration(function.rpo.target)
    return form | {"notes": ""}


def test_the_review_drafts_from_stored_reports_and_records_the_owners_answer(scheduler) -> None:
    sandbox = scheduler.sandbox()
    locations = sandbox.storage_locations()
    required = [locations[n] for n in ("dr", "primary")]
    # A drill measured 2400 s: the video upload target (30m) was missed, user authentication (15m) too,
    # reporting (4h) met. Stored like dr_drill stores its reports.
    policy = sandbox.policy
    drill = DrillResult(drill_id="review-test-drill", started_at="2026-11-02T06:00:00+00:00", success=True,
                        failed_checks=[], rto_seconds=2400.0, rpo_seconds=0.0,
                        objectives=function_rto_objectives(policy, measured_seconds=2400.0, source="drill rebuild"))
    store_report(drill, required, name="review-test-drill", prefix="reports/drill/", render=render_drill)

    # A fresh install's first (scheduled) review waits for its owners; one run at a time: answer it first.
    # (Its stack starts paused: unpaused, the scheduler starts the newest interval's run, as on a fresh install.)
    scheduler.unpause(DAG)
    assert poll(lambda: scheduler.api(f"/api/v2/dags/{DAG}/dagRuns?limit=10")["dag_runs"], timeout=90, interval=2), \
        "no scheduled review after unpausing"
    answered = False
    for run in scheduler.api(f"/api/v2/dags/{DAG}/dagRuns?limit=10")["dag_runs"]:
        if run["state"] in ("queued", "running"):
            answered = True
            scheduler.answer(DAG, run["dag_run_id"], "confirm_targets", ["Confirm targets"],
                             {k: v for k, v in _current_targets(policy).items()})
            assert scheduler.wait_for_run(DAG, run["dag_run_id"]) == "success", scheduler.diagnose(DAG, run["dag_run_id"])

    run_id = scheduler.trigger(DAG)
    scheduler.wait_for_task(DAG, run_id, "draft_review", ("success",), timeout=180)
    review = scheduler.api(f"/api/v2/dags/{DAG}/dagRuns/{run_id}/taskInstances/draft_review/xcomEntries/return_value")["value"]
    rows = {f["function"]: f for f in review["functions"]}
    assert rows["video_upload"]["rto_verdict"] == "missed" and rows["video_upload"]["rto_target"] == "30m"
    assert any(m["source"].startswith("drill review-test-drill") for m in rows["video_upload"]["rto_measured"])
    measured_functions = set(policy.functions_on_the_database())
    for name, row in rows.items():
        if name not in measured_functions:
            assert row["rto_verdict"] == "not measured", name
    assert "video_upload RTO" in review["targets_missed"] and review["drills"] >= 1
    # The plan counts as reviewed from the owners' last answer; before any, from what the policy records.
    if answered:
        assert review["last_reviewed"] == f"{datetime.now(timezone.utc):%Y-%m-%d}" and review["reviewed_by"] == "admin"
    else:
        assert review["last_reviewed"] == "2026-01-15" and review["reviewed_by"] == "sre-lead@example.com"
    stored = locations["dr"].get_bytes(f"reviews/{review['review_id']}.md").decode()
    assert "| video_upload | 30m | 2400.0 s | missed |" in stored

    # Management was told by e-mail that the review awaits an answer (when the question was asked).
    scheduler.wait_for_task(DAG, run_id, "confirm_targets", ("awaiting_input",))
    reminders = [message_text(m) for m in mails(scheduler.root / "receivers")]
    assert [m for m in reminders if f"Recovery plan review {run_id} awaits your answer" in m and "cto@example.com" in m]

    # The owners answer in the UI: video upload's RTO target becomes 45m, everything else confirmed.
    form = {f"{name}__{kind}": value for name, f in rows.items()
            for kind, value in (("rto_target", f["rto_target"]), ("rpo_target", f["rpo_target"]))}
    form |= {"video_upload__rto_target": "45m", "notes": "uploads need a faster restore path first"}
    scheduler.answer(DAG, run_id, "confirm_targets", ["Request the changes entered"], form)
    assert scheduler.wait_for_run(DAG, run_id) == "success", scheduler.diagnose(DAG, run_id)
    decision = json.loads(locations["primary"].get_bytes(f"reviews/{review['review_id']}-decision.json"))
    assert decision["outcome"] == "changes requested" and decision["decided_by"] == "admin"
    assert decision["changes"] == {"video_upload": {"rto_target": "45m"}}
    assert decision["notes"] == "uploads need a faster restore path first"
