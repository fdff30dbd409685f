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


def test_every_alone_module_lives_where_make_test_collects_the_alone_part() -> None:
    """`make test`'s second part collects only ALONE_PATHS (the Makefile): a module marked `alone` elsewhere would
    silently never run."""
    import re

    from tests.conftest import ALONE_MODULES, TESTS_DIR

    makefile = (TESTS_DIR.parent / "Makefile").read_text()
    [paths] = re.findall(r"^ALONE_PATHS := (.+)$", makefile, flags=re.M)
    roots = [TESTS_DIR.parent / path for path in paths.split()]
    for name in ALONE_MODULES:
        found = sorted(TESTS_DIR.rglob(name))
        assert found, f"{name} (tests/conftest.py ALONE_MODULES) is no test module"
        for module in found:
            assert any(root in module.parents for root in roots), f"{module} is outside ALONE_PATHS ({paths})"
