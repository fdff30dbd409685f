"""The policy and include/ are found through configuration, then the Airflow project's layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from continuity.policy import project
from continuity.policy.loading import load_policy


@pytest.fixture
def unconfigured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in (project.PROJECT_ENV_VAR, project.INCLUDE_ENV_VAR, project.POLICY_ENV_VAR, "AIRFLOW_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_configuration_comes_first(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(project.PROJECT_ENV_VAR, str(unconfigured / "deploy"))
    assert project.include_dir() == unconfigured / "deploy" / "include"
    assert project.policy_path() == unconfigured / "deploy" / "include" / "policy.yaml"
    monkeypatch.setenv(project.INCLUDE_ENV_VAR, str(unconfigured / "shared-include"))
    assert project.policy_path() == unconfigured / "shared-include" / "policy.yaml"
    monkeypatch.setenv(project.POLICY_ENV_VAR, str(unconfigured / "prod.yaml"))
    assert project.policy_path() == unconfigured / "prod.yaml"
    assert project.default_policy_path() == unconfigured / "shared-include" / "policy.yaml"


def test_unconfigured_the_airflow_home_then_the_current_directory(unconfigured: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (unconfigured / "include").mkdir()
    assert project.project_dir() == unconfigured
    home = unconfigured / "airflow-home"
    (home / "include").mkdir(parents=True)
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    assert project.include_dir() == home / "include"


def test_nowhere_to_be_found_says_what_to_set(unconfigured: Path) -> None:
    with pytest.raises(project.ProjectNotFound, match=r"looked in .*HINT: set \$CONTINUITY_PROJECT"):
        project.policy_path()
    with pytest.raises(project.ProjectNotFound):
        load_policy()


def test_an_explicit_policy_file_needs_no_project(unconfigured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(project.POLICY_ENV_VAR, str(Path(__file__).resolve().parents[3] / "include" / "policy.yaml"))
    assert load_policy().topology.entry_point.config_conn_id == "continuity_pgbouncer_config"
