"""The layer rule is enforced: every core module is under the import-linter contract, which `make test` runs."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_LAYER = {"hooks", "operators", "sensors", "triggers", "alerts", "notifiers", "auth"}


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return next(c for c in config["contracts"] if c["name"] == "The core never imports Airflow")


def test_every_core_module_is_under_the_contract() -> None:
    package = ROOT / "plugins" / "continuity"
    core = {f"continuity.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"}
    core |= {f"continuity.{p.name}" for p in package.iterdir()
             if p.is_dir() and (p / "__init__.py").exists() and p.name not in AIRFLOW_LAYER}
    assert set(_contract()["source_modules"]) == core, "classify the new module: core (the contract) or Airflow layer"


def test_the_contract_holds() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
