"""Reports of restore tests and drills: the verdict against an objective, and where reports go."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from continuity.storage import StorageLocation


def verdict(objective: dict[str, Any]) -> str:
    """'pass' within the target, 'within maximum' past it but inside the tolerated maximum, else 'FAIL'."""
    if objective["within_target"]:
        return "pass"
    return "within maximum" if objective["within_maximum"] else "FAIL"


def store_report(result: dict[str, Any], locations: list[StorageLocation], *, name: str, prefix: str,
                 render: Callable[[dict[str, Any]], str]) -> list[str]:
    """Write the JSON report and its Markdown rendering to every location; returns where the JSON went."""
    keys = []
    for location in locations:
        location.put_bytes(f"{prefix}{name}.json", json.dumps(result, indent=2).encode())
        location.put_bytes(f"{prefix}{name}.md", render(result).encode())
        keys.append(location.describe(f"{prefix}{name}.json"))
    return keys
