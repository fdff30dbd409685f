"""Write `continuity.policy.access`'s roles and users into the FAB auth manager's tables (run with the deployment's
Airflow environment: `python -m continuity.auth.fab < users.json`, the users as JSON on stdin so that no
password reaches argv). Safe to run again: roles get their grants, existing users their role and password.

Also the auth manager itself: FAB's, except that a human-in-the-loop task assigned to users by name (the
policy names approvers by user name) accepts them by name as well as by FAB's numeric id.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from airflow.providers.fab.auth_manager.fab_auth_manager import FabAuthManager

from continuity.policy.access import ROLES, AccessUser, role_grants


class ContinuityAuthManager(FabAuthManager):
    """FAB's auth manager; HITL assignees match by user name too (FAB's ids are row numbers, unknown to a
    policy written before the users exist)."""

    def is_authorized_hitl_task(self, *, assigned_users: set[str], user: Any) -> bool:
        return str(user.get_id()) in assigned_users or user.get_name() in assigned_users


def sync(users: list[AccessUser]) -> list[str]:
    """Roles with their grants, then the users. Returns one line per change, for the log."""
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    done: list[str] = []
    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        for name in ROLES:
            base, grants = role_grants(name)
            role = sm.find_role(name) or sm.add_role(name)
            template = sm.find_role(base)
            if template is None:
                raise SystemExit(f"FAB role {base} missing: run `airflow db migrate` with the FAB auth manager first")
            for permission in template.permissions:
                sm.add_permission_to_role(role, permission)
            for action, resource in grants:
                sm.add_permission_to_role(role, sm.create_permission(action, resource))
            done.append(f"role {name}: {base}'s permissions + {len(grants)} grants")
        for user in users:
            role = sm.find_role(user.role)
            existing = sm.find_user(username=user.username)
            if existing is None:
                if not sm.add_user(username=user.username, first_name=user.username, last_name=user.role,
                                   email=f"{user.username}@continuity.invalid", role=role, password=user.password):
                    raise SystemExit(f"user {user.username} could not be created (see the log above)")
                done.append(f"user {user.username} created with role {user.role}")
            else:
                existing.roles = [role]
                sm.update_user(existing)
                sm.reset_password(existing.id, user.password)
                done.append(f"user {user.username} now has role {user.role}")
    return done


def main() -> int:
    users = [AccessUser.model_validate(entry) for entry in json.load(sys.stdin)]
    for line in sync(users):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
