"""The roles of a deployment: what each may do, in the FAB auth manager's terms."""

from __future__ import annotations

from continuity.policy import access
from continuity_lab.controlplane import ControlPlane


def test_an_operator_triggers_and_approves_failovers_and_a_viewer_only_reads() -> None:
    base, grants = access.role_grants("dr_operator")
    assert base == "Viewer"
    assert ("can_create", "DAG Run:dr_failover") in grants and ("can_edit", "DAG:dr_failover") in grants
    assert ("can_edit", "HITL Detail") in grants
    assert not any(resource in ("Connections", "Variables", "DAG Runs", "DAGs") for _, resource in grants), \
        "an operator gets no global edit and no connections"
    assert access.role_grants("dr_viewer") == ("Viewer", [])
    assert access.role_grants("dr_admin") == ("Admin", [])


def test_the_sandbox_users_get_passwords_once_in_a_private_file(tmp_path) -> None:
    plane = ControlPlane(root=tmp_path)
    users = plane.users()
    assert {(u.username, u.role) for u in users} == set(access.SANDBOX_USERS)
    assert len({u.password for u in users}) == len(users) and all(len(u.password) >= 20 for u in users)
    assert plane.users_file.stat().st_mode & 0o777 == 0o600
    assert ControlPlane(root=tmp_path).users() == users, "generated once, then read back"


def test_the_auth_manager_named_for_the_deployment_is_the_one_that_exists() -> None:
    from continuity.auth.fab import ContinuityAuthManager

    assert access.AUTH_MANAGER == f"{ContinuityAuthManager.__module__}.{ContinuityAuthManager.__qualname__}"
