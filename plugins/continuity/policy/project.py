"""Where a deployment's files are: configuration first, then the layout of the Airflow project.

- ``$CONTINUITY_POLICY``: the policy file.
- ``$CONTINUITY_INCLUDE``: the include directory (SQL schema, expectation suites, scripts, templates).
- ``$CONTINUITY_PROJECT``: the project directory (``dags/``, ``plugins/``, ``include/``), the default
  for both: ``<project>/include`` and ``<project>/include/policy.yaml``.

With none of them set, the project is the Airflow project this runs in: ``$AIRFLOW_HOME`` when it
holds ``include/`` (the official image's and the astro template's layout), else the current
directory when it does (a checkout, as `make run` and `make test` use it).
"""

from __future__ import annotations

import os
from pathlib import Path

POLICY_ENV_VAR = "CONTINUITY_POLICY"
# A YAML laid over the policy: a deployment's own settings (node hosts, node control) without a copy of it.
POLICY_OVERLAY_ENV_VAR = "CONTINUITY_POLICY_OVERLAY"
INCLUDE_ENV_VAR = "CONTINUITY_INCLUDE"
PROJECT_ENV_VAR = "CONTINUITY_PROJECT"
# The development lab's sandbox this shell works against (`continuity sandbox env` sets it): the product only ever
# uses a sandbox this names (or a command's --root), never one it happens to find on disk.
SANDBOX_ENV_VAR = "CONTINUITY_SANDBOX"
# The recorded topology (dr_failover writes it; every DAG reads it): an Airflow Variable and its copy in storage.
TOPOLOGY_VARIABLE = "continuity_topology"
TOPOLOGY_PREFIX, TOPOLOGY_NAME = "topology/", "current"
TOPOLOGY_KEY = f"{TOPOLOGY_PREFIX}{TOPOLOGY_NAME}.json"


class ProjectNotFound(FileNotFoundError):
    """No configuration says where the project's files are, and no default place holds them."""


def project_dir() -> Path:
    configured = os.environ.get(PROJECT_ENV_VAR)
    if configured:
        return Path(configured).absolute()
    candidates = [Path(home) for home in [os.environ.get("AIRFLOW_HOME")] if home] + [Path.cwd()]
    for candidate in candidates:
        if (candidate / "include").is_dir():
            return candidate.absolute()
    raise ProjectNotFound(
        f"cannot find the Continuity project (its include/ holds the policy, SQL and expectation suites): looked in "
        f"{', '.join(str(c) for c in candidates)}; HINT: set ${PROJECT_ENV_VAR} to the directory holding dags/, "
        f"plugins/ and include/, or ${POLICY_ENV_VAR} and ${INCLUDE_ENV_VAR}")


def include_dir() -> Path:
    configured = os.environ.get(INCLUDE_ENV_VAR)
    return Path(configured).absolute() if configured else project_dir() / "include"


def policy_overlay_path() -> Path | None:
    """$CONTINUITY_POLICY_OVERLAY, the deployment's overlay of the policy, if set."""
    configured = os.environ.get(POLICY_OVERLAY_ENV_VAR)
    return Path(configured) if configured else None


def policy_path() -> Path:
    """The policy file in use: $CONTINUITY_POLICY, else include/policy.yaml."""
    configured = os.environ.get(POLICY_ENV_VAR)
    return Path(configured) if configured else include_dir() / "policy.yaml"


def default_policy_path() -> Path:
    """The project's own policy file, whatever $CONTINUITY_POLICY says (the sandbox's seed)."""
    return include_dir() / "policy.yaml"
