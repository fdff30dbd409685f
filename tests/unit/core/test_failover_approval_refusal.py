"""The cut-over's own check of the recorded approval (#30 item 5): the approve task marked success by hand leaves
no record, and that is no approval."""

from __future__ import annotations

from continuity.failover.records import ApprovalRecord, approval_refusal


def _record(**fields) -> dict:
    return ApprovalRecord(**{"required": True, "approved": True, "approved_by": "operator-2",
                             "triggered_by": "operator-1", **fields}).model_dump(mode="json")


def test_an_approval_by_a_second_person_lets_the_cut_over_go_ahead() -> None:
    assert approval_refusal(_record(), required=True, triggered_by="operator-1") is None


def test_no_recorded_approval_is_refused_with_a_hint() -> None:
    refusal = approval_refusal(None, required=True, triggered_by="operator-1")
    assert refusal is not None and "no approval is recorded" in refusal and "marked success by hand" in refusal
    assert "nothing changed" in refusal


def test_a_record_that_did_not_ask_anyone_is_refused_when_the_policy_requires_a_second_person() -> None:
    # What the approve step records when the policy did not require approval, replayed against one that does.
    record = _record(required=False, approved_by=None)
    assert "requires a second person's approval" in approval_refusal(record, required=True, triggered_by="operator-1")
    assert approval_refusal(record, required=False, triggered_by="operator-1") is None


def test_self_approval_and_rejection_are_refused() -> None:
    assert "who triggered the run" in approval_refusal(_record(approved_by="operator-1"), required=True,
                                                       triggered_by="operator-1")
    assert "not approved" in approval_refusal(_record(approved=False), required=True, triggered_by="operator-1")


def test_an_automatic_failover_needs_no_second_person() -> None:
    record = ApprovalRecord(required=False, approved=True, triggered_by=None).model_dump(mode="json")
    assert approval_refusal(record, required=True, triggered_by=None) is None


def test_an_unreadable_record_is_refused() -> None:
    assert "unreadable" in approval_refusal({"approved": "maybe"}, required=True, triggered_by="operator-1")
