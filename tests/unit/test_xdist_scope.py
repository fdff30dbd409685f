"""The test run's distribution over two cores (tests/conftest.py `xdist_scope`): a module stays on one worker, and
every system-tier module shares one scope, so two whole Airflows never run at once."""

from __future__ import annotations

from tests.conftest import xdist_scope


def test_a_module_is_one_scope() -> None:
    assert xdist_scope("tests/integration/test_failover.py::test_switchover[a]") == "tests/integration/test_failover.py"
    assert xdist_scope("tests/unit/core/test_policy.py::test_x") == "tests/unit/core/test_policy.py"


def test_every_system_module_shares_one_scope() -> None:
    assert {xdist_scope("tests/system/test_run.py::test_a"),
            xdist_scope("tests/system/test_incident_dag.py::test_b")} == {"system-tier"}
