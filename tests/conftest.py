"""Test setup: a private AIRFLOW_HOME (set before anything imports Airflow) and the sandbox fixture."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

PROJECT_ROOT = Path(__file__).resolve().parents[1]
_AIRFLOW_HOME = tempfile.mkdtemp(prefix="continuity-test-airflow-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PROJECT_ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
# One Fernet key for the session: `airflow dags test` subprocesses and this process read and write the
# same metadata DB, and a Variable one of them encrypted must decrypt in the other.
os.environ["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
# The project's DAGs, plus test-only DAGs that exercise sensors and operators on their own.
TEST_DAGS_DIR = PROJECT_ROOT / "tests" / "integration" / "dags"
os.environ["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"] = json.dumps([
    {"name": "dags-folder", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle", "kwargs": {}},
    {"name": "test-dags", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
     "kwargs": {"path": str(TEST_DAGS_DIR)}},
])
os.environ.pop("CONTINUITY_SANDBOX", None)
os.environ.pop("CONTINUITY_POLICY", None)
os.environ.pop("CONTINUITY_INCLUDE", None)
os.environ["CONTINUITY_PROJECT"] = str(PROJECT_ROOT)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_AIRFLOW_HOME, ignore_errors=True)


TESTS_DIR = Path(__file__).resolve().parent
# The tiers, cheapest first: a test lives in the cheapest one that can show its behaviour (tests/<tier>/).
#   unit: no socket, no subprocess (enforced by tests/unit/conftest.py), seconds; `make test-fast`
#   component: one real service (one PostgreSQL, one S3 server, the receivers, ...)
#   integration: the sandbox (PostgreSQL with replication, PgBouncer, S3 + gateways, the application)
#   system: a whole Airflow (`continuity run`, standalone or distributed)
#   perf: memory and time bounds at size
TIERS = ("unit", "component", "integration", "system", "perf")

# Tests that judge the machine's own health (a fresh `continuity run` is green: the health monitor measures real
# latency and lag): `make test` runs them after the parallel part, alone on the machine.
ALONE_MODULES = {"test_run.py"}


def tier_of(path: Path) -> str:
    parts = path.resolve().relative_to(TESTS_DIR).parts
    if len(parts) < 2 or parts[0] not in TIERS:
        raise pytest.UsageError(f"{path}: every test lives in a tier's folder (tests/<tier>/, tier one of {TIERS})")
    return parts[0]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item.path)
        item.add_marker(getattr(pytest.mark, tier))
        if tier == "unit" and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(60))
        if item.path.name in ALONE_MODULES:
            item.add_marker(pytest.mark.alone)
    items.sort(key=lambda item: tier_of(item.path) != "system")  # the longest share starts first; order kept otherwise


def xdist_scope(nodeid: str) -> str:
    """The unit of distribution across pytest-xdist's workers: a module (its module-scoped sandbox stays on one
    worker), except in the system tier, where it is the module's folder: a whole Airflow is a package-scoped
    fixture of its folder (tests/system/scheduler/conftest.py), so the modules sharing it share a worker, and
    each folder's stack is up once. (xdist's own `--dist loadgroup` would express this with `xdist_group` marks,
    but under pytest 9.2 its `item._nodeid = ...@group` no longer changes the node id, so it silently schedules
    by test; see tests/unit/test_xdist_scope.py.)"""
    module = nodeid.split("::", 1)[0]
    return str(Path(module).parent) if Path(module).parts[:2] == ("tests", "system") else module


def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    from xdist.scheduler import LoadScopeScheduling

    class TierScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_scope(nodeid)

    return TierScheduling(config, log)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """A migrated SQLite metadata DB in the private AIRFLOW_HOME, for dag.test()."""
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, f"airflow db migrate failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return _AIRFLOW_HOME


def _new_sandbox_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)  # PostgreSQL runs as the postgres user and must enter it
    return root


class SandboxFactory:
    """Builds sandboxes on free ports in temporary directories. A module that needs one of its own (a failover
    reshapes it) tears it down when done (`tear_down`); whatever is left is torn down at the session's end."""

    def __init__(self) -> None:
        from continuity_lab.sandbox import Sandbox

        self._sandbox_class = Sandbox
        self.made: list = []

    def __call__(self, *, scale: float = 0.2, prefix: str = "continuity-sandbox-", wal_pusher: bool = False):
        # Without the WAL pusher by default: tests that look at the spool see what archive_command queued
        # (the pusher's own tests start it, `continuity run` always does).
        sandbox = self._sandbox_class(root=_new_sandbox_root(prefix))
        self.made.append(sandbox)
        sandbox.up(scale=scale, wal_pusher=wal_pusher)
        return sandbox

    def tear_down(self, sandbox) -> None:
        """Stop and remove `sandbox` now: its nodes, application and stand-ins would otherwise keep running (and
        taking memory and CPU) under every later test of the session."""
        if sandbox in self.made:
            self.made.remove(sandbox)
        try:
            sandbox.down(purge=True)
        except Exception as exc:  # the test's own outcome matters more than a teardown's
            print(f"teardown of {sandbox.root} failed: {exc}", file=sys.stderr)

    @contextlib.contextmanager
    def own(self, **kwargs) -> Iterator:
        """A sandbox for one module, torn down when the module is done with it."""
        sandbox = self(**kwargs)
        try:
            yield sandbox
        finally:
            self.tear_down(sandbox)


@pytest.fixture(scope="session")
def sandbox_factory() -> Iterator[SandboxFactory]:
    """Build sandboxes; every one still up is torn down at the end of the session."""
    factory = SandboxFactory()
    try:
        yield factory
    finally:
        for sandbox in list(factory.made):
            factory.tear_down(sandbox)


@pytest.fixture(scope="session")
def sandbox(sandbox_factory) -> Iterator:
    """One running sandbox for the session, with its Airflow connections in the environment."""
    box = sandbox_factory()
    saved = dict(os.environ)
    for key, value in box.environment().items():
        if key != "AIRFLOW_HOME" and not key.startswith("AIRFLOW__CORE__"):
            os.environ[key] = value
    try:
        yield box
    finally:
        os.environ.clear()
        os.environ.update(saved)
