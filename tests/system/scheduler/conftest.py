"""The real scheduler for the tests that need it (human-in-the-loop steps answered through the REST API):
one `continuity run` for the modules of this folder, started by the first test that asks for it and stopped
after the folder's last test (package scope: kept for the session, its scheduler and DAG processor took most
of a core from every test that ran after them). The folder is one xdist scope (tests/conftest.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import airflow_run


@pytest.fixture(scope="package")
def scheduler() -> Iterator[airflow_run.AirflowRun]:
    """`continuity run` with the sandbox's policy made quick: acknowledgement (executive group) 20 s,
    partner notice approval 15 s, so timeouts pass while a test watches; every DAG but the incident's two paused."""
    root = Path(tempfile.mkdtemp(prefix="continuity-scheduler-run-"))
    root.chmod(0o755)
    # Paused: a fresh install's scheduled runs (the drill's rebuild and switchover, backups, the restore test) took
    # most of both cores under these tests; test_run.py shows them green. Each test unpauses what it drives.
    run = airflow_run.start(root, overlay={"communication": {"stakeholder_groups": {"executive": {"escalation": "20s"}},
                                                             "audiences": {"partners": {"deadline": "15s"}}}},
                            paused=True)
    run.unpause("dr_incident")
    run.unpause_watched("dr_incident_inbox")  # the health monitor's reports reach it through its asset's watcher
    try:
        yield run
    finally:
        airflow_run.stop(run)
