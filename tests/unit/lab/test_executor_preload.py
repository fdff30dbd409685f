"""The lab's executors load what the DAG files import before forking the processes that run tasks."""

from __future__ import annotations

import sys
from pathlib import Path

from continuity_lab.executor import modules_imported_by, preload_dag_imports

DAGS = Path(__file__).resolve().parents[3] / "dags"


def test_every_top_level_import_of_the_dag_files_is_listed_once_and_relative_or_nested_ones_are_not(tmp_path) -> None:
    (tmp_path / "a.py").write_text("import json, os.path\nfrom continuity.operators.backup import X\n"
                                   "from . import sibling\ndef f():\n    import csv\n")
    (tmp_path / "b.py").write_text("from continuity.operators.backup import Y\nimport json\n")
    (tmp_path / "broken.py").write_text("from continuity import (\n")  # the DAG processor's error to report
    (tmp_path / "notes.txt").write_text("import nothing\n")
    assert modules_imported_by(tmp_path) == ["continuity.operators.backup", "json", "os.path"]


def test_the_shipped_dag_files_import_the_operators_the_tasks_run() -> None:
    modules = modules_imported_by(DAGS)
    assert "continuity.operators.incident" in modules and "continuity.operators.failover" in modules, modules


def test_a_module_that_does_not_import_is_skipped_and_named_and_the_rest_load(tmp_path) -> None:
    (tmp_path / "dag.py").write_text("import continuity_no_such_module\nimport colorsys\n")
    sys.modules.pop("colorsys", None)
    preloaded = preload_dag_imports(tmp_path)
    assert preloaded.loaded == ["colorsys"] and "colorsys" in sys.modules
    assert preloaded.failed == {"continuity_no_such_module": "ModuleNotFoundError: No module named 'continuity_no_such_module'"}
