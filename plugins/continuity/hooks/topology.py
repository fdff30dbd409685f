"""Where the current topology lives after a failover: an Airflow Variable every DAG reads.

The policy file names the nodes and who was primary when it was written; dr_failover records who is
primary now (`continuity_topology`: primary, timeline, when, by which run). Every hook and operator
takes its policy through `current_policy()`, so backups and health checks follow the new primary
without anyone editing the policy. A copy goes to `topology/current.json` in storage for tools that
run without Airflow.
"""

from __future__ import annotations

import json
import logging

from airflow.sdk import Variable
from pydantic import ValidationError

from continuity.failover import TopologyRecord
from continuity.policy import Policy, load_policy

log = logging.getLogger(__name__)

TOPOLOGY_VARIABLE = "continuity_topology"
TOPOLOGY_KEY = "topology/current.json"


def read_topology() -> TopologyRecord | None:
    """The recorded topology, or None before the first failover (outside a task: None)."""
    raw = Variable.get(TOPOLOGY_VARIABLE, default=None)
    if raw in (None, ""):
        return None
    try:
        return TopologyRecord.model_validate(raw if isinstance(raw, dict) else json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"Variable {TOPOLOGY_VARIABLE} is not a topology record ({exc}); HINT: it is written by "
                         f"dr_failover: restore it from topology/current.json in storage, or delete it to follow "
                         f"the policy") from None


def write_topology(record: TopologyRecord) -> None:
    Variable.set(TOPOLOGY_VARIABLE, record.model_dump_json(), description=(
        "Written by dr_failover: the current primary. Every Continuity DAG reads it; do not edit by hand."))


def current_policy(path: str | None = None) -> Policy:
    """The policy with the node roles of the recorded topology."""
    policy = load_policy(path)
    record = read_topology()
    if record is not None:
        try:
            return policy.with_primary(record.primary)
        except KeyError as exc:
            raise ValueError(f"Variable {TOPOLOGY_VARIABLE} names primary {record.primary!r}, which the policy "
                             f"does not know: {exc}") from None
    return policy
