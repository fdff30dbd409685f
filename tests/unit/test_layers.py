"""The layer rules hold, with no module list that can go stale (pyproject.toml's import-linter contracts): the core
never imports Airflow, the product never imports the lab, the core's packages stay on their floors, and the core never
reaches Airflow through the Airflow layer either."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = ROOT / "plugins"
PACKAGE = ROOT / "plugins" / "continuity"


def _contract(name: str) -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["name"] == name)


def _airflow_layer() -> set[str]:
    """The packages the core contract exempts (`continuity.hooks.** -> airflow` and the like)."""
    return {re.fullmatch(r"(continuity\.\w+)\.\*\* -> airflow", line).group(1)
            for line in _contract("The core never imports Airflow")["ignore_imports"]}


def test_the_contracts_hold(capsys: pytest.CaptureFixture[str]) -> None:
    from importlinter.cli import lint_imports

    code = lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    assert code == 0, capsys.readouterr().out[-3000:]


def test_every_exempt_package_is_of_the_airflow_layer() -> None:
    """An exemption is for a package that imports Airflow; one that no longer does must leave the list (and its
    modules fall under the core rule)."""
    for package in _airflow_layer():
        directory = PACKAGE / package.split(".", 1)[1]
        assert (directory / "__init__.py").exists(), f"{package} is exempted but is no package"
        sources = "\n".join(p.read_text() for p in directory.rglob("*.py"))
        assert re.search(r"^\s*(from|import) airflow\b", sources, re.M), f"{package} is exempted but imports no Airflow"


def test_the_core_never_imports_the_airflow_layer() -> None:
    """The core contract ignores the Airflow layer's own imports of Airflow, so a core module importing a hook would
    reach Airflow unseen by it: this closes that gap."""
    graph = grimp.build_graph("continuity")
    layer = _airflow_layer()

    def in_layer(module: str) -> bool:
        return any(module == p or module.startswith(p + ".") for p in layer)

    crossings = sorted(f"{importer} -> {imported}" for imported in graph.modules if in_layer(imported)
                       for importer in graph.find_modules_that_directly_import(imported) if not in_layer(importer))
    assert crossings == []


def test_every_part_of_the_package_is_on_a_floor_or_of_the_airflow_layer() -> None:
    """A new package or module of `continuity` must be placed: on one of the core's floors, or in the Airflow layer."""
    floors = {room.strip() for floor in _contract("The core's layers")["layers"] for room in floor.split("|")}
    parts = {f"continuity.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    parts |= {f"continuity.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert parts - floors - _airflow_layer() == set(), "put the new part on a floor (pyproject.toml) or in the Airflow layer"
    assert floors - parts == set(), "a floor names a part that no longer exists"


def test_no_module_is_over_600_lines_without_saying_why_at_its_top() -> None:
    long_and_silent = []
    for package in ("continuity", "continuity_lab"):
        for path in sorted((PLUGINS / package).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > 600 and "Longer than 600 lines on purpose" not in text[:4000]:
                long_and_silent.append(f"{path.relative_to(PLUGINS)} ({text.count(chr(10))} lines)")
    assert not long_and_silent, ("split these, or say at the top why not ('Longer than 600 lines on purpose: ...'): "
                                 + ", ".join(long_and_silent))
