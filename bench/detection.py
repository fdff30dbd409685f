"""Detection to first login (`make bench`): SIGKILL of the primary until a user logs in through the DR application.

Under the real scheduler (`continuity run`, LocalExecutor, the triggerer's 30-second probe rounds) with
the policy's automatic failover turned on: the primary's postmaster is killed, and a client tries to log
in through the DR region's application every 0.5 s. Measured: seconds from the kill to the probe rounds'
disaster event (the dr_health_monitor run it starts), to the dr_failover run, and to the first successful
login in us-west-2 (detection, confirmation from the standbys' side, promotion, repoint, DR services
started, all included). Also the triggerer's CPU time per healthy round (its load: healthy rounds start
no DAG run at all). Reference: Patroni's default detection alone is about 30 s (ttl 30, loop_wait 10).

    python bench/detection.py [--probe-interval 30s] [--consecutive 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from table import print_table  # noqa: E402  (bench/table.py)
from tests.integration import airflow_run  # noqa: E402

from continuity.policy.project import default_policy_path  # noqa: E402
from continuity_lab.sandbox import Sandbox  # noqa: E402


def _triggerer_cpu_seconds() -> float:
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "airflow triggerer" not in cmdline:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _runs(run: airflow_run.AirflowRun, dag_id: str) -> list[dict]:
    return run.api(f"/api/v2/dags/{dag_id}/dagRuns?order_by=start_date&limit=50")["dag_runs"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe-interval", default="30s")
    parser.add_argument("--consecutive", type=int, default=3)
    parser.add_argument("--healthy-window", type=float, default=95.0, help="seconds of healthy rounds to measure")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="continuity-bench-detection-"))
    root.chmod(0o755)
    policy_file = root / "policy-auto-failover.yaml"
    text = default_policy_path().read_text()
    for old, new in (("  auto_failover: false\n", "  auto_failover: true\n"),
                     ("  consecutive_failures: 3\n", f"  consecutive_failures: {args.consecutive}\n"),
                     ("  probe_interval: 30s\n", f"  probe_interval: {args.probe_interval}\n")):
        assert old in text, old
        text = text.replace(old, new, 1)
    policy_file.write_text(text)
    run = airflow_run.start(root, policy_file=policy_file, scale=0.05)
    rows: list[tuple[str, str]] = []
    try:
        sandbox = Sandbox(root=root)
        # The round's own cost, measured in this process against the same sandbox (the triggerer's total
        # below includes its other triggers and its own loop).
        os.environ.update({k: v for k, v in sandbox.environment().items() if k.startswith("AIRFLOW_CONN_")})
        os.environ["AIRFLOW_HOME"] = str(root / "airflow")
        from continuity.hooks.health import HealthProbeHook

        hook = HealthProbeHook()
        own = [hook.probe_round() for _ in range(4)][1:]  # the first builds the clients the triggerer keeps
        rows.append(("one probe round (database, latency, storage, 6 transactions)",
                     f"{sorted(r.seconds for r in own)[1]:.2f} s wall, {sorted(r.cpu_seconds for r in own)[1]:.3f} s CPU "
                     f"(median of 3; {own[0].checks} checks, score {own[0].score})"))
        monitor_runs_before = len(_runs(run, "dr_health_monitor"))
        cpu_before, started = _triggerer_cpu_seconds(), time.monotonic()
        time.sleep(args.healthy_window)
        cpu_after, elapsed = _triggerer_cpu_seconds(), time.monotonic() - started
        rounds = elapsed / float(args.probe_interval.rstrip("s"))
        monitor_runs = len(_runs(run, "dr_health_monitor")) - monitor_runs_before
        rows.append(("whole triggerer CPU per 30-s period (every trigger, its loop)",
                     f"{(cpu_after - cpu_before) / rounds:.3f} s ({rounds:.1f} rounds in {elapsed:.0f} s)"))
        rows.append(("dr_health_monitor runs started by healthy rounds", f"{monitor_runs} (cron runs included)"))

        dr_url = sandbox.application_urls("us-west-2")[0]
        credentials = {"email": sandbox.PROBE_EMAIL, "password": sandbox.password("app_probe")}
        pid = int((sandbox.cluster("primary").data_dir / "postmaster.pid").read_text().split()[0])
        failovers_before = len(_runs(run, "dr_failover"))
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        print(f"primary (pid {pid}) killed; logging in through {dr_url} every 0.5 s", flush=True)
        first_login = failover_seen = None
        deadline = killed + 600
        while time.monotonic() < deadline and first_login is None:
            try:
                if httpx.post(f"{dr_url}/login", json=credentials, timeout=3).status_code == 200:
                    first_login = time.monotonic() - killed
            except httpx.HTTPError:
                pass
            if failover_seen is None and len(_runs(run, "dr_failover")) > failovers_before:
                failover_seen = time.monotonic() - killed
            time.sleep(0.5)
        rows.append(("SIGKILL of the primary → dr_failover run seen", f"{failover_seen:.1f} s" if failover_seen
                     else "not seen"))
        rows.append(("SIGKILL of the primary → first login through the DR application",
                     f"{first_login:.1f} s" if first_login else "none within 600 s"))
        rows.append(("policy", f"probe_interval {args.probe_interval}, consecutive_failures {args.consecutive}"))
        failover = _runs(run, "dr_failover")[-1] if failover_seen else None
        if failover:
            tasks = run.api(f"/api/v2/dags/dr_failover/dagRuns/{failover['dag_run_id']}/taskInstances")["task_instances"]
            steps = {t["task_id"]: t.get("duration") for t in tasks}
            rows.append(("dr_failover steps (s)", ", ".join(f"{k} {v:.1f}" for k, v in steps.items() if v)))
    finally:
        airflow_run.stop(run)
    print("Detection to first login (SIGKILL of the primary, continuity run, LocalExecutor)")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
