"""Defaults every Continuity DAG shares (no Airflow import: DAG files pass these on)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

OWNER = "continuity"
START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)

# Retrying is safe for tasks that only read or whose effects are idempotent; DAGs whose steps
# are not (failover) override `retries` explicitly.
DEFAULT_ARGS = {
    "owner": OWNER,
    "retries": 1,
    "retry_delay": timedelta(minutes=1),
}

# Airflow pools the DAGs rely on; `continuity run` and the compose init create them. One slot for
# the WAL spool: two shippers on one spool raced (one failed on a vanished file). The core's
# spool lock covers callers outside Airflow.
WAL_SPOOL_POOL = "continuity_wal_spool"
POOLS: dict[str, tuple[int, str]] = {
    WAL_SPOOL_POOL: (1, "one WAL shipper at a time per archive spool"),
}


def region_queue(region: str) -> str:
    """The Celery queue of `region`'s worker: a task that must act from a region runs on it. Under the
    LocalExecutor (`continuity run`, `airflow standalone`) queues are ignored and every task runs here."""
    return f"region-{region}"
