"""The lab's Airflow executors: the DAG files' imports loaded once, before the processes that run tasks fork.

Every task runs in a process forked from an executor worker and parses its DAG file there. On a cold
interpreter that parse imports continuity's operators and hooks, the providers, boto3 and the pydantic
models: about 0.8 s of CPU per task on this 2-core machine (`dags/dr_incident.py` 0.83 s cold, 0.11 s with its
imports loaded), and the lab's stacks run hundreds of tasks. Loaded in the scheduler (LocalExecutor) or the
Celery worker's main process before the pool forks, each task finds them imported already.

Nothing here changes what runs: a module that fails to import is skipped (logged), and the task's own
parse of its DAG file reports the error as it always did.
"""

from __future__ import annotations

import ast
import importlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from airflow.executors.local_executor import LocalExecutor

log = logging.getLogger(__name__)


def modules_imported_by(dags_folder: Path) -> list[str]:
    """The absolute module names the DAG files of `dags_folder` import at their top level, sorted."""
    modules: set[str] = set()
    for dag_file in sorted(dags_folder.glob("*.py")):
        try:
            tree = ast.parse(dag_file.read_text(), filename=str(dag_file))
        except (OSError, SyntaxError, ValueError):
            continue  # the DAG processor reports the file's own error
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module)
            elif isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names)
    return sorted(modules)


@dataclass(frozen=True)
class Preloaded:
    loaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # module: why it did not import


def preload_dag_imports(dags_folder: Path | None = None) -> Preloaded:
    """Import what the DAG files import. A module that fails is logged, skipped and named in the result."""
    if dags_folder is None:
        from airflow.configuration import conf

        dags_folder = Path(conf.get("core", "dags_folder"))
    started, result = time.process_time(), Preloaded()
    for name in modules_imported_by(dags_folder):
        try:
            importlib.import_module(name)
        except Exception as exc:  # a broken module is the DAG parse's to report, with its traceback
            result.failed[name] = f"{type(exc).__name__}: {exc}"
            log.warning("preload: %s did not import (%s); tasks import it themselves", name, exc)
            continue
        result.loaded.append(name)
    log.info("preloaded %d modules the DAG files import in %.1f s of CPU", len(result.loaded),
             time.process_time() - started)
    return result


class PreloadingLocalExecutor(LocalExecutor):
    """Airflow's LocalExecutor whose workers fork with the DAG files' imports already loaded."""

    def start(self) -> None:
        preload_dag_imports()
        super().start()
