"""Who may do what: the roles of a Continuity deployment, in the FAB auth manager's terms (actions on
resources), and the sandbox's users. Pure data; `continuity.auth.fab` writes it into Airflow.

- dr_viewer sees DAGs, runs, task logs, reports (XCom) and approvals, and changes nothing.
- dr_operator sees what a viewer sees, triggers dr_failover and dr_incident, and answers their approvals
  (the second person of a failover; an incident's acknowledgement and notices).
- dr_admin is Airflow's Admin: connections, variables, pools, roles and users.
"""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict

# FAB's auth manager with HITL assignees matched by name too (continuity.auth.fab); a distributed run uses it.
AUTH_MANAGER = "continuity.auth.fab.ContinuityAuthManager"

Role = Literal["dr_viewer", "dr_operator", "dr_admin"]
ROLES: tuple[Role, ...] = ("dr_viewer", "dr_operator", "dr_admin")

# The DAGs an operator triggers by hand and whose human-in-the-loop tasks it answers.
OPERATED_DAGS = ("dr_failover", "dr_incident")

# FAB's resource names (airflow.providers.fab.www.security.permissions), spelled out so this module
# needs no Airflow import.
_VIEWER = "Viewer"  # FAB's built-in role: read access to everything but connections, variables, users
_ADMIN = "Admin"


def role_grants(role: Role) -> tuple[str, list[tuple[str, str]]]:
    """The FAB built-in role whose permissions `role` starts from, and the (action, resource) pairs added."""
    if role == "dr_viewer":
        return _VIEWER, []
    if role == "dr_admin":
        return _ADMIN, []
    grants: list[tuple[str, str]] = [("can_edit", "HITL Detail"), ("menu_access", "HITL Detail")]
    for dag_id in OPERATED_DAGS:
        # Triggering checks "DAG Run:<id>" (create) and the DAG itself (edit); answering an approval checks
        # "HITL Detail" (edit) and the DAG (edit).
        grants += [("can_create", f"DAG Run:{dag_id}"), ("can_read", f"DAG Run:{dag_id}"),
                   ("can_edit", f"DAG:{dag_id}"), ("can_read", f"DAG:{dag_id}")]
    return _VIEWER, grants


class AccessUser(BaseModel):
    """A person allowed in, with one role. The password never leaves the 0600 file it is kept in."""

    model_config = ConfigDict(extra="forbid")

    username: str
    role: Role
    password: str


# The sandbox's people: an admin, two operators (one triggers a failover, the other approves it), the CEO
# (communication.approvers: approves public statements) and a viewer.
SANDBOX_USERS: tuple[tuple[str, Role], ...] = (("admin", "dr_admin"), ("operator-1", "dr_operator"),
                                               ("operator-2", "dr_operator"), ("ceo", "dr_operator"),
                                               ("viewer", "dr_viewer"))


def sandbox_users() -> list[AccessUser]:
    return [AccessUser(username=name, role=role, password=secrets.token_urlsafe(18)) for name, role in SANDBOX_USERS]
