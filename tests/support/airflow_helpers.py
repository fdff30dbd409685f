"""Run a DAG with dag.test() against the sandbox and read what its tasks reported."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DAGS_DIR = Path(__file__).resolve().parents[2] / "dags"


_DAG_TEST_FILE = str(Path("airflow", "sdk", "definitions", "dag.py"))


def _quicker_dag_test_loop() -> None:
    """dag.test() sleeps a whole second each time its loop finds nothing to run: skipped tasks propagate one level
    per pass (a dry-run failover waited 5 s for its skipped branch), and it polls that way for a deferred or
    human-in-the-loop task. A tenth of a second changes nothing the run does, only the waiting. Its `time` is
    imported inside the method, so the one sleep patched is the module's, and only for calls from that file."""
    real_sleep = time.sleep
    if getattr(real_sleep, "continuity_quicker", False):
        return

    def sleep(seconds: float) -> None:
        caller = sys._getframe(1).f_code.co_filename
        real_sleep(min(seconds, 0.1) if caller.endswith(_DAG_TEST_FILE) else seconds)

    sleep.continuity_quicker = True  # type: ignore[attr-defined]
    time.sleep = sleep


def load_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    _quicker_dag_test_loop()

    bag = DagBag(dag_folder=str(DAGS_DIR / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.get_dag(dag_id)
    # Airflow 3.3.2's dag.test() looks deadline alerts up by id from the unserialized DAG and
    # crashes; the scheduler, which evaluates them, reads the serialized DAG. Deadlines are
    # tested on their own (tests/integration/test_deadlines.py, and under the scheduler in test_run.py).
    dag.deadline = None
    return dag


def task_states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def xcom(dag_run, task_id: str, key: str = "return_value") -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = (
            session.query(XComModel)
            .filter(XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id,
                    XComModel.task_id == task_id, XComModel.key == key)
            .one_or_none()
        )
        return None if row is None else XComModel.deserialize_value(row)


def forget_topology() -> None:
    """Delete the recorded topology (the Variable dr_failover writes): DAGs follow the policy again."""
    from airflow.models.variable import Variable

    from continuity.hooks.topology import TOPOLOGY_VARIABLE

    Variable.delete(TOPOLOGY_VARIABLE)


@contextmanager
def sandbox_environment(box) -> Iterator[Any]:
    """A sandbox of a module's own (failovers reshape it) as the DAGs' world: its connections in the
    environment and no recorded topology; both undone after."""
    saved = dict(os.environ)
    for key, value in box.environment().items():
        if key != "AIRFLOW_HOME" and not key.startswith("AIRFLOW__CORE__"):
            os.environ[key] = value
    forget_topology()
    try:
        yield box
    finally:
        forget_topology()
        os.environ.clear()
        os.environ.update(saved)
