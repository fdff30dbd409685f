"""Policies for tests through the project's own overlay ($CONTINUITY_POLICY_OVERLAY, `policy.loading.overlay_policy`):
a test names only what it changes, as data, and a key the policy does not have fails to load instead of a text
replacement silently matching nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from continuity.policy.loading import load_policy
from continuity.policy.model import Policy
from continuity.policy.project import POLICY_OVERLAY_ENV_VAR


def use_overlay(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, changes: dict[str, Any]) -> Policy:
    """Lay `changes` over the policy in use for the rest of the test (this process and the processes it starts
    with its environment); returns the policy as the DAGs will load it. Entries of named lists (nodes, storage
    locations) are matched by `name`."""
    path = tmp_path / "policy-overlay.yaml"
    path.write_text(yaml.safe_dump(changes))
    monkeypatch.setenv(POLICY_OVERLAY_ENV_VAR, str(path))
    return load_policy()


def every_location(**fields: Any) -> dict[str, Any]:
    """An overlay giving every storage location of the project's policy the same `fields` (e.g. a prefix)."""
    from continuity.policy.project import default_policy_path

    locations = load_policy(default_policy_path()).storage.locations
    return {"storage": {"locations": [{"name": location.name, **fields} for location in locations]}}
