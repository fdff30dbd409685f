"""The test run's distribution over the workers (tests/conftest.py `xdist_scope`): a module stays on one worker,
and the system tier's modules that share a whole Airflow (their folder's package-scoped stack) share one."""

from __future__ import annotations

from tests.conftest import xdist_scope


def test_a_module_is_one_scope() -> None:
    assert xdist_scope("tests/integration/test_failover.py::test_switchover[a]") == "tests/integration/test_failover.py"
    assert xdist_scope("tests/unit/core/test_policy.py::test_x") == "tests/unit/core/test_policy.py"


def test_the_system_modules_of_one_stack_share_a_scope_and_two_stacks_do_not() -> None:
    assert {xdist_scope("tests/system/scheduler/test_incident_dag.py::test_b"),
            xdist_scope("tests/system/scheduler/test_plan_review.py::test_c")} == {"tests/system/scheduler"}
    assert xdist_scope("tests/system/distributed/test_region_loss_orchestrator.py::test_d") == "tests/system/distributed"
