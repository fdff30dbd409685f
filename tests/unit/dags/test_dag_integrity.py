"""Every DAG file imports cleanly, follows the project's conventions and does no I/O at import time."""

from __future__ import annotations

import functools

import socket
import subprocess
from datetime import timedelta
from pathlib import Path

import botocore.endpoint
import psycopg
import psycopg2
import pytest
from airflow.dag_processing.dagbag import DagBag

DAGS_DIR = Path(__file__).resolve().parents[3] / "dags"
DAG_FILES = sorted(p for p in DAGS_DIR.glob("*.py") if not p.name.startswith("_"))


class ImportTimeIO(AssertionError):
    pass


@pytest.fixture(scope="session")
def libraries_imported() -> None:
    """Every DAG file loaded once (what libraries do on first import is not a DAG's doing)."""
    for path in DAG_FILES:
        _bag(path)


@pytest.fixture
def no_io(libraries_imported: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Network connections and subprocesses raise while the DAG file runs (it must only declare)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise ImportTimeIO(f"I/O at DAG import time: {args[1:] or kwargs}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
    # libpq and botocore do not go through Python's socket.connect.
    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(refuse))
    monkeypatch.setattr(psycopg, "connect", refuse)
    monkeypatch.setattr(psycopg2, "connect", refuse)
    monkeypatch.setattr(botocore.endpoint.Endpoint, "_send", refuse)


def _load(path: Path) -> DagBag:
    """A fresh parse of `path`, for a test that changed what the DAG file reads (the policy, its environment)."""
    return DagBag(dag_folder=str(path))


@functools.cache
def _bag(path: Path) -> DagBag:
    """`path` parsed once per session with the project's own policy: the tests that only read the DAG share it
    (each parse is most of a second; parsing every file for each of ~15 tests took 100 s)."""
    return _load(path)


def test_there_are_dags() -> None:
    assert DAG_FILES, f"no DAG files in {DAGS_DIR}"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_file_imports_cleanly(path: Path, no_io: None) -> None:
    bag = _load(path)
    assert not bag.import_errors, bag.import_errors
    assert bag.dags, f"{path.name} defines no DAG"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_dag_conventions(path: Path) -> None:
    for dag_id, dag in _bag(path).dags.items():
        assert dag_id.startswith("dr_"), f"{dag_id}: ids are prefixed dr_"
        assert path.stem == dag_id, f"{path.name}: one DAG per file, named like the file"
        assert dag.tags and "continuity" in dag.tags, f"{dag_id}: needs the 'continuity' tag"
        assert dag.doc_md and dag_id in dag.doc_md, f"{dag_id}: doc_md=__doc__ with a title naming the DAG"
        assert dag.catchup is False, f"{dag_id}: catchup=False"
        # dr_incident's runs wait on people for hours: one cause's run must not hold up another's alert.
        assert dag.max_active_runs == (64 if dag_id == "dr_incident" else 1), f"{dag_id}: one run at a time"
        assert "retries" in dag.default_args, f"{dag_id}: retries must be decided explicitly in default_args"
        for task in dag.tasks:
            assert task.owner == "continuity", f"{dag_id}.{task.task_id}: owner"
            # One decision per DAG: a task retrying on its own would rerun a step the DAG said must not be.
            assert task.retries == dag.default_args["retries"], \
                f"{dag_id}.{task.task_id}: retries {task.retries}, the DAG decided {dag.default_args['retries']}"
    if path.stem == "dr_failover":
        assert all(task.retries == 0 for task in _bag(path).dags["dr_failover"].tasks), "no failover step retries"


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_every_recurring_dag_runs_on_the_policys_schedule(path: Path) -> None:
    """One source of truth: a DAG whose cron differs from include/policy.yaml fails here."""
    from continuity.policy.loading import load_policy

    policy = load_policy()
    for dag_id, dag in _bag(path).dags.items():
        timetable = getattr(dag.timetable, "timetable", dag.timetable)  # an asset-or-time schedule's time part
        expression = getattr(timetable, "expression", None) or getattr(timetable, "_expression", None)
        if dag_id in ("dr_failover", "dr_incident"):
            assert expression is None and dag_id not in policy.schedules, f"{dag_id} runs when triggered"
            continue
        assert expression == policy.schedule_for(dag_id), f"{dag_id}: {expression!r} is not the policy's schedule"


def test_the_monthly_drill_switches_over_when_the_policy_says_so() -> None:
    from continuity.policy.loading import load_policy

    dag = _bag(DAGS_DIR / "dr_drill.py").dags["dr_drill"]
    assert dag.params["include_switchover"] is load_policy().validation.drill.include_switchover is True


def test_a_schedule_that_breaks_the_validation_cadence_is_refused(tmp_path: Path) -> None:
    from continuity.policy.model import PolicyError
    from continuity.policy.loading import load_policy
    from continuity.policy.project import default_policy_path

    text = default_policy_path().read_text().replace('dr_restore_test: "0 5 * * 0"', 'dr_restore_test: "0 5 1 * *"')
    (tmp_path / "policy.yaml").write_text(text)
    with pytest.raises(PolicyError, match=r"schedules.dr_restore_test: validation.weekly lists restore_test_sample, "
                                          r"but '0 5 1 \* \*' runs only every 31d"):
        load_policy(tmp_path / "policy.yaml")
    (tmp_path / "policy.yaml").write_text(text.replace('"0 5 1 * *"', '"every sunday"'))
    with pytest.raises(PolicyError, match="schedules.dr_restore_test: expected a cron expression"):
        load_policy(tmp_path / "policy.yaml")


def test_object_replication_schedule_and_tasks_are_the_policys() -> None:
    from continuity.policy.loading import load_policy

    objects = load_policy().objects
    dag = _bag(DAGS_DIR / "dr_object_replication.py").dags["dr_object_replication"]
    assert dag.timetable.expression == objects.schedule
    assert sorted(t.task_id for t in dag.tasks) == sorted(f"replicate_{c}" for c in objects.categories)


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.name)
def test_every_task_that_ships_the_wal_spool_takes_its_pool(path: Path) -> None:
    from continuity.dag_defaults import POOLS, WAL_SPOOL_POOL
    from continuity.operators.wal import ShipWalOperator

    assert POOLS[WAL_SPOOL_POOL][0] == 1
    for dag in _bag(path).dags.values():
        for task in dag.tasks:
            if isinstance(task, ShipWalOperator):
                assert task.pool == WAL_SPOOL_POOL, f"{dag.dag_id}.{task.task_id} ships the spool outside its pool"


@pytest.mark.parametrize("control_region", [None, "eu-west-1"])
def test_tasks_run_on_the_queue_of_the_region_they_act_in(control_region: str | None, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the CeleryExecutor: restore tests and drills in the DR region, the failover in the control
    region (never the primary region it fails away from), everything else on the default queue that
    `continuity run --distributed` points at the control region's worker."""
    from continuity.dag_defaults import region_queue
    from continuity.policy.loading import load_policy
    from continuity.policy.project import default_policy_path

    if control_region is not None:
        text = default_policy_path().read_text().replace("  control_region: us-west-2", f"  control_region: {control_region}")
        (tmp_path / "policy.yaml").write_text(text)
        monkeypatch.setenv("CONTINUITY_POLICY", str(tmp_path / "policy.yaml"))
    policy = load_policy()
    assert policy.control_region == (control_region or "us-west-2")
    pinned = {"dr_restore_test": region_queue(policy.topology.dr_region),
              "dr_drill": region_queue(policy.topology.dr_region),
              "dr_failover": region_queue(policy.control_region)}
    for name, queue in pinned.items():
        dag = _load(DAGS_DIR / f"{name}.py").dags[name]
        assert {task.queue for task in dag.tasks} == {queue}, name
    assert region_queue(policy.topology.primary_region) not in {task.queue for task in
                                                               _load(DAGS_DIR / "dr_failover.py").dags["dr_failover"].tasks}
    # The viewpoints: one task per region holding database nodes, each on its own region's queue.
    viewpoints = _load(DAGS_DIR / "dr_viewpoint_probe.py").dags["dr_viewpoint_probe"]
    assert {task.task_id: task.queue for task in viewpoints.tasks} == {
        "observe_from_us_east_1": region_queue("us-east-1"), "observe_from_us_west_2": region_queue("us-west-2")}
    assert viewpoints.dagrun_timeout == timedelta(minutes=2), "a lost region's queued task gives the next run way"
    unpinned = _load(DAGS_DIR / "dr_full_backup.py").dags["dr_full_backup"]
    assert {task.queue for task in unpinned.tasks} == {"default"}  # [operators] default_queue at parse time


def test_airflow_does_not_load_the_package_as_top_level_plugin_modules() -> None:
    from airflow._shared.module_loading import find_path_from_directory

    plugins = Path(__file__).resolve().parents[3] / "plugins"
    loaded = [p for p in find_path_from_directory(str(plugins), ".airflowignore", "glob") if p.endswith(".py")]
    # Only the Airflow plugin itself (the status page); the package is imported as a package.
    assert loaded == [str(plugins / "continuity_status_page.py")], \
        f"Airflow would import these as top-level plugin modules: {loaded[:5]}"


def test_the_status_page_plugin_registers_its_app() -> None:
    import importlib.util

    path = Path(__file__).resolve().parents[3] / "plugins" / "continuity_status_page.py"
    spec = importlib.util.spec_from_file_location("continuity_status_page", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    [app] = module.ContinuityStatusPagePlugin.fastapi_apps
    assert app["url_prefix"] == "/continuity" and {r.path for r in app["app"].routes} >= {"/status", "/status.json"}
