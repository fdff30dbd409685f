"""Where the current topology lives after a failover: an Airflow Variable every DAG reads.

The policy file names the nodes and who was primary when it was written; dr_failover records who is
primary now (`continuity_topology`: primary, timeline, when, by which run). Every hook and operator
takes its policy through `current_policy()`, so backups and health checks follow the new primary
without anyone editing the policy. A copy goes to `topology/current.json` in storage for tools that
run without Airflow.

Operators and hooks take the policy one way: `ContinuityPolicyHook(...).policy` (the Continuity hooks
extend it; operators reach it through their hook).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from typing import Any

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.sdk import BaseHook, Variable
from pydantic import ValidationError

from continuity.failover.records import TopologyRecord
from continuity.policy.project import TOPOLOGY_KEY, TOPOLOGY_NAME, TOPOLOGY_PREFIX, TOPOLOGY_VARIABLE  # noqa: F401 - re-exported
from continuity.policy.model import Policy
from continuity.policy.loading import load_policy

log = logging.getLogger(__name__)



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


class ContinuityPolicyHook(BaseHook):
    """The policy as it stands now: the file, with the primary dr_failover recorded.

    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml).
    :param follow_topology: apply the recorded topology (a Variable); off where Variables are not
        readable (deadline callbacks) and only storage is needed.
    """

    hook_name = "Continuity policy"

    def __init__(self, *, policy_path: str | None = None, follow_topology: bool = True) -> None:
        super().__init__()
        self.policy_path = policy_path
        self.follow_topology = follow_topology
        self._policy: Policy | None = None
        self._s3_clients: dict[tuple[str | None, str | None], Any] = {}

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            self._policy = current_policy(self.policy_path) if self.follow_topology else load_policy(self.policy_path)
        return self._policy

    def get_conn(self) -> Policy:
        return self.policy

    def s3_client(self, conn_id: str | None, region: str | None) -> Any:
        """The boto3 S3 client of an AWS connection in `region`, through the amazon provider (its credentials,
        endpoint and retries): the one factory of the Continuity hooks. One per connection and region for the
        hook's life (the triggerer keeps its hook across probe rounds): building one costs more CPU than a
        request."""
        if (conn_id, region) not in self._s3_clients:
            self._s3_clients[(conn_id, region)] = shared_s3_client(conn_id, region)
        return self._s3_clients[(conn_id, region)]


# Process-wide: every hook instance built its own client, and each costs 0.27 s of CPU (botocore loads and parses
# its endpoint and service JSON once per boto3 session): 3.3 s of a 7.4 s dr_failover dry run under dag.test. Keyed
# by a digest of the connection as well, so a rotated secret or a changed endpoint gets a new client. boto3 clients
# are thread-safe.
_SHARED_S3_CLIENTS: dict[tuple[str | None, str | None, str], Any] = {}
_SHARED_S3_LOCK = threading.Lock()
_SHARED_S3_MAX = 64


def _connection_digest(conn_id: str | None) -> str:
    if conn_id is None:  # the default credential chain: the environment decides
        material = repr(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    else:
        conn = BaseHook.get_connection(conn_id)
        material = repr((conn.conn_type, conn.host, conn.port, conn.login, conn.password, conn.extra))
    return hashlib.sha256(material.encode()).hexdigest()


def shared_s3_client(conn_id: str | None, region: str | None) -> Any:
    """The S3 client of `conn_id` in `region` through the amazon provider, one per process and connection."""
    key = (conn_id, region, _connection_digest(conn_id))
    with _SHARED_S3_LOCK:
        client = _SHARED_S3_CLIENTS.get(key)
    if client is None:
        client = S3Hook(aws_conn_id=conn_id, region_name=region).get_conn()
        with _SHARED_S3_LOCK:
            if len(_SHARED_S3_CLIENTS) >= _SHARED_S3_MAX:
                _SHARED_S3_CLIENTS.pop(next(iter(_SHARED_S3_CLIENTS)))
            client = _SHARED_S3_CLIENTS.setdefault(key, client)
    return client
