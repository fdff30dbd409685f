"""`continuity run` (what `make run` does) for tests that need the real scheduler: start it, log in to
the REST API, wait for runs and human-in-the-loop tasks, answer them, stop it with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from continuity.policy.loading import load_policy
from continuity.policy.model import Policy
from continuity.policy.project import POLICY_OVERLAY_ENV_VAR
from continuity.postgres.cluster import free_port
from continuity_lab.controlplane import ControlPlane
from continuity_lab.sandbox import Sandbox

from tests.support.airflow_helpers import DAGS_DIR
from tests.support.policies import use_overlay

TERMINAL = ("success", "failed")


class Refused(AssertionError):
    """The API answered 401 or 403: the user may not do that."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def passwords(root: Path) -> dict[str, str]:
    """Each user's password: the distributed run's FAB users (control-plane/users.json), else the simple auth
    manager's generated file."""
    plane = ControlPlane(root=root)
    if plane.users_file.exists():
        return {user.username: user.password for user in plane.users()}
    return json.loads((root / "airflow" / "simple_auth_manager_passwords.json.generated").read_text())


def api(port: int, path: str, token: str | None = None, body: dict | None = None, method: str | None = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body else None,
                                     method=method, headers={"Content-Type": "application/json",
                                                             **({"Authorization": f"Bearer {token}"} if token else {})})
    for attempt in range(5):
        try:
            # The API server answers slowly while the scheduler starts every DAG's first run on 2 cores.
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = response.read()
                return json.loads(answer) if answer else None
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise Refused(f"{path}: HTTP {exc.code}: {exc.read()[:500]!r}", exc.code) from exc
            # A write that failed is the test's finding (the metadata database is PostgreSQL: nothing locks);
            # a read may be asked again.
            if exc.code < 500 or request.get_method() != "GET" or attempt == 4:
                raise AssertionError(f"{path}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc
            time.sleep(2)
        except TimeoutError:
            # A read (or a token) asked again changes nothing; a trigger or an answer might have been taken.
            if not (request.get_method() == "GET" or path == "/auth/token") or attempt == 4:
                raise
    raise AssertionError("unreachable")


@dataclass
class AirflowRun:
    root: Path
    port: int
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)
    token: str = ""
    overlay_file: Path | None = None

    @property
    def policy(self) -> Policy:
        """The policy as the stack's DAGs load it (the project's, with the stack's overlay file)."""
        with pytest.MonkeyPatch.context() as patch:
            if self.overlay_file is not None:
                patch.setenv(POLICY_OVERLAY_ENV_VAR, str(self.overlay_file))
            return load_policy()

    def sandbox(self) -> Sandbox:
        """The stack's sandbox, under the stack's policy."""
        return Sandbox(root=self.root, policy=self.policy)

    def api(self, path: str, body: dict | None = None, method: str | None = None, *, as_user: str | None = None) -> Any:
        return api(self.port, path, self.login(as_user) if as_user else self.token, body, method)

    def login(self, user: str) -> str:
        """A token for another user of `continuity run`'s auth manager (passwords in its generated file)."""
        return api(self.port, "/auth/token", body={"username": user, "password": passwords(self.root)[user]})["access_token"]

    def unpause(self, dag_id: str) -> None:
        self.api(f"/api/v2/dags/{dag_id}", {"is_paused": False}, method="PATCH")

    def unpause_watched(self, dag_id: str, *, timeout: float = 120) -> None:
        """Unpause a DAG scheduled on assets that have watchers, and wait until the triggerer runs them. Airflow
        registers an asset's watchers only when the file is parsed with its DAG unpaused
        (airflow.dag_processing.collection._find_active_assets), and these stacks parse dags/ once at start: the
        file is parsed again on request, as the UI's "Reparse" does."""
        self.unpause(dag_id)
        self.api(f"/api/v2/parseDagFile/{self.api(f'/api/v2/dags/{dag_id}/details')['file_token']}", method="PUT")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(asset["watchers"] for asset in self.api(f"/api/v2/assets?dag_ids={dag_id}&limit=100")["assets"]):
                return
            time.sleep(2)
        raise AssertionError(f"{dag_id} unpaused and parsed again, but no watcher of its assets after {timeout:.0f} s")

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, as_user: str | None = None) -> str:
        return self.api(f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf or {}},
                        as_user=as_user)["dag_run_id"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        tasks = self.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=100")["task_instances"]
        return {t["task_id"]: t["state"] for t in tasks}

    def wait_for_run(self, dag_id: str, run_id: str, *, timeout: float = 180) -> str:
        deadline, state = time.monotonic() + timeout, "queued"
        while time.monotonic() < deadline:
            state = self.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]
            if state in TERMINAL:
                return state
            time.sleep(2)
        raise AssertionError(f"{dag_id} run {run_id} still {state} after {timeout:.0f} s: {self.diagnose(dag_id, run_id)}")

    def wait_for_task(self, dag_id: str, run_id: str, task_id: str, states: tuple[str, ...], *,
                      timeout: float = 120) -> str:
        deadline, state = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            state = self.task_states(dag_id, run_id).get(task_id)
            if state in states:
                return state
            time.sleep(1)
        raise AssertionError(f"{dag_id}.{task_id} in {run_id}: {state} after {timeout:.0f} s, expected one of {states}; "
                             f"{self.diagnose(dag_id, run_id)}")

    def diagnose(self, dag_id: str, run_id: str) -> str:
        """Every task's state, and the end of each attempt's log of the tasks that did not finish well."""
        states = self.task_states(dag_id, run_id)
        lines = [f"tasks: {states}"]
        logs = self.root / "airflow" / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        for task_id, state in states.items():
            if state not in ("success", "skipped", "upstream_failed", None):
                for log_file in sorted((logs / f"task_id={task_id}").glob("*.log")):
                    lines.append(f"--- {log_file.name} of {task_id}:\n" + log_file.read_text(errors="replace")[-2500:])
        return "\n".join(lines)

    def answer(self, dag_id: str, run_id: str, task_id: str, chosen: list[str],
               params_input: dict[str, Any] | None = None, *, as_user: str | None = None) -> dict[str, Any]:
        """Respond to a human-in-the-loop task as the logged-in user (what the UI's form does), and see the
        answer taken: the task resumes, or Airflow asks again and is answered again."""
        self.wait_for_task(dag_id, run_id, task_id, ("awaiting_input", "deferred"))
        # Airflow 3.3.2 race: an answer before the scheduler has read the parked workload's "success" from
        # the executor requeues the task first, and the scheduler then marks it UP_FOR_RETRY ("finished
        # with state success, but ... queued"): the next try asks again. A person waits at least this long
        # and, on a loaded machine, may still meet the race; like a person, the test answers the new ask.
        # 15 s, not 5: under the whole suite on 2 cores the scheduler's loop lagged past 5 s, the race struck
        # the last try and the run failed (twice in six CI runs of 2026-12-08: dr_incident, dr_plan_review).
        for _ in range(3):
            time.sleep(15)
            asked = self._task_instance(dag_id, run_id, task_id)["try_number"]
            response = self.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/-1/hitlDetails",
                                {"chosen_options": chosen, "params_input": params_input or {}}, method="PATCH",
                                as_user=as_user)
            if not self._asked_again(dag_id, run_id, task_id, asked):
                return response
        raise AssertionError(f"{dag_id}.{task_id} in {run_id} asked again after three answers: "
                             f"{self.diagnose(dag_id, run_id)}")

    def _task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        return self.api(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")

    def _asked_again(self, dag_id: str, run_id: str, task_id: str, asked: int, *, timeout: float = 240) -> bool:
        """Whether the answered try went to a retry that now waits for input again (False once it finished:
        "running" is no proof, the race marks a running resume UP_FOR_RETRY too)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            instance = self._task_instance(dag_id, run_id, task_id)
            if instance["try_number"] > asked and instance["state"] in ("awaiting_input", "deferred"):
                return True
            if instance["try_number"] == asked and instance["state"] in ("success", "failed", "skipped"):
                return False
            time.sleep(1)
        raise AssertionError(f"{dag_id}.{task_id} in {run_id} neither resumed nor asked again within {timeout:.0f} s: "
                             f"{self.diagnose(dag_id, run_id)}")

    def interrupt(self) -> str:
        os.killpg(self.process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        remaining, _ = self.process.communicate(timeout=120)
        return remaining


def start(root: Path, *, overlay: dict[str, Any] | None = None, scale: float = 0.05, timeout: float = 300,
          distributed: bool = False, paused: bool = False) -> AirflowRun:
    """`continuity run` (`--distributed`: the CeleryExecutor deployment) in `root`, logged in as admin once
    the UI is up (the caller interrupts it). `overlay`: what the stack's policy changes of the project's (the
    project's overlay file, `tests/support/policies`); `paused`: no DAG runs until the test unpauses it."""
    port = free_port()
    # As from a user's shell: none of the test session's Airflow settings (run sets its own).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # No test edits a DAG file while its stack runs: parse dags/ once at start, not every 30 s (a
            # re-parse of every file is a process per file, most of a core on this machine, under every test
            # that runs beside the stack).
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "3600"}
    overlay_file = None
    if overlay is not None:
        with pytest.MonkeyPatch.context() as patch:  # the overlay's variable for the stack's environment only
            use_overlay(patch, root, overlay)
            overlay_file = Path(os.environ[POLICY_OVERLAY_ENV_VAR])
        env[POLICY_OVERLAY_ENV_VAR] = str(overlay_file)
    if paused:
        env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] = "True"
    process = subprocess.Popen([sys.executable, "-m", "continuity.cli", "run", "--root", str(root), "--port", str(port),
                                "--scale", str(scale), *(["--distributed"] if distributed else [])], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, start_new_session=True)
    run = AirflowRun(root=root, port=port, process=process, overlay_file=overlay_file)
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        run.output.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    text = "".join(run.output)
    if f"Airflow UI: http://localhost:{port}" not in text:
        run.interrupt() if process.poll() is None else None
        raise AssertionError(f"continuity run did not come up:\n{text[-3000:]}")
    run.token = api(port, "/auth/token", body={"username": "admin", "password": passwords(root)["admin"]})["access_token"]
    wanted = sorted(p.stem for p in DAGS_DIR.glob("dr_*.py"))
    listed: list[str] = []
    deadline = time.monotonic() + 90  # the dag-processor parses dags/ shortly after start
    while time.monotonic() < deadline and sorted(listed) != wanted:
        listed = [d["dag_id"] for d in run.api("/api/v2/dags?limit=100")["dags"]]
        time.sleep(2)
    assert sorted(listed) == wanted, f"DAGs listed {sorted(listed)}, expected {wanted}"
    return run


def stop(run: AirflowRun) -> None:
    """Ctrl-C if still running, then the sandbox down and its directory gone."""
    import shutil

    if run.process.poll() is None:
        run.interrupt()
    keep = bool(os.environ.get("CONTINUITY_KEEP_TEST_ROOT"))  # to read task logs after a failure (as test_run.py)
    subprocess.run([sys.executable, "-m", "continuity.cli", "sandbox", "down", *([] if keep else ["--purge"]),
                    "--root", str(run.root)], capture_output=True, check=False)
    if not keep:
        shutil.rmtree(run.root, ignore_errors=True)
