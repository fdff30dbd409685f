"""The stand-ins for SMTP, Slack, PagerDuty and the status page, and the WAL pusher (one part of `continuity_lab.sandbox.Sandbox`)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from continuity.postgres.cluster import free_port, port_is_free, scrubbed_environment, stop_pid
from continuity.policy.project import INCLUDE_ENV_VAR, POLICY_ENV_VAR, PROJECT_ENV_VAR, SANDBOX_ENV_VAR, policy_path
from continuity.waiting import poll
from continuity_lab import receivers as receivers_module
from continuity_lab.processes import GUARD_NEEDLE, WAL_PUSHER_NEEDLE, SandboxError, is_our_process

log = logging.getLogger(__name__)


def _names(ready: Path, pid: int) -> bool:
    try:
        return ready.read_text().strip() == str(pid)
    except FileNotFoundError:
        return False


class ServicesPart:
    """The stand-ins for SMTP, Slack, PagerDuty and the status page, and the WAL pusher."""

    # -- SMTP and webhook receivers (Slack, PagerDuty, status page stand-ins) ---------------------
    @property
    def receivers_dir(self) -> Path:
        return self.root / "receivers"

    def _start_receivers(self, started: list[str]) -> None:
        receivers = self.state.setdefault("receivers", {"smtp_port": free_port(), "http_port": free_port(), "pid": None})
        receivers.setdefault("https_port", free_port())
        for service in ("smtp", "slack", "pagerduty"):  # the credentials the stand-ins' connections carry
            self.state["secrets"].setdefault(service, secrets.token_urlsafe(24))
        if is_our_process(receivers.get("pid"), "continuity_lab.receivers"):
            return
        # A port free when chosen can be bound by another process before the receivers bind it (seen at a fresh
        # `continuity run` right after a test run): the receivers then exit at once, and are started again on
        # fresh ports, up to three times, instead of being waited for.
        for attempt in range(1, 4):
            for key in ("smtp_port", "http_port", "https_port"):
                if attempt > 1 or not port_is_free(receivers[key]):
                    receivers[key] = free_port()
            ready = self.receivers_dir / receivers_module.READY_FILE
            ready.unlink(missing_ok=True)
            process = self._spawn_receivers(receivers)
            receivers["pid"] = process.pid
            self._save_state()
            ports = {"the SMTP receiver": receivers["smtp_port"], "the webhook receiver": receivers["http_port"],
                     "the webhook receiver's HTTPS port": receivers["https_port"]}
            # Ready is the receivers' own word (a file naming their pid once every port is bound): a port that
            # answers may be another process's, which is how a taken port looked like a started receiver.
            if poll(lambda: process.poll() is not None or _names(ready, process.pid),
                    timeout=30, interval=0.1) and process.poll() is None:
                started.append("receivers")
                return
            if process.poll() is None:
                stop_pid(process.pid, name="receivers", sig=signal.SIGTERM)
                raise SandboxError(f"the receivers did not listen on {ports} within 30 s "
                                   f"(log: {self.logs_dir / 'receivers.log'})")
            tail = (self.logs_dir / "receivers.log").read_text(errors="replace").strip().splitlines()[-1:]
            if not tail or "address already in use" not in tail[0].lower():
                raise SandboxError(f"the receivers exited at start: {tail[0] if tail else 'no output'} "
                                   f"(log: {self.logs_dir / 'receivers.log'})")
            log.info("a receiver's port was taken before it bound it (attempt %d): choosing new ports", attempt)
        raise SandboxError(f"the receivers found a port taken three times (log: {self.logs_dir / 'receivers.log'})")

    def _spawn_receivers(self, receivers: dict) -> subprocess.Popen:
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "receivers.log", "ab") as log_handle:
            return subprocess.Popen(
                [sys.executable, "-m", "continuity_lab.receivers", "--root", str(self.receivers_dir),
                 "--smtp-port", str(receivers["smtp_port"]), "--http-port", str(receivers["http_port"]),
                 "--https-port", str(receivers["https_port"]), "--tls-dir", str(self.receivers_dir / "tls"),
                 "--smtp-login", "continuity"],
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.root,  # the password goes by environment, never on the command line
                env=scrubbed_environment({"CONTINUITY_SMTP_PASSWORD": self.password("smtp"),
                                          **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}))


    def start_wal_pusher(self, started: list[str] | None = None) -> bool:
        """`continuity wal pusher` on the spool: every segment archive_command queues reaches every storage
        location within seconds. False when it already runs."""
        entry = self.state.setdefault("wal_pusher", {"pid": None})
        if is_our_process(entry.get("pid"), WAL_PUSHER_NEEDLE):
            return False
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with open(self.logs_dir / "wal-pusher.log", "ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "continuity.cli", "wal", "pusher", "--root", str(self.root),
                 "--spool", str(self.spool_dir), "--socket", str(self.wal_fetch_socket),
                 "--socket-owner", self.user.name],
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                cwd=self.root, env=scrubbed_environment({
                    POLICY_ENV_VAR: str(policy_path().absolute()),
                    **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", PROJECT_ENV_VAR, INCLUDE_ENV_VAR)}}))
        entry["pid"] = process.pid
        if started is not None:
            started.append("wal pusher")
        self._save_state()
        return True

    def stop_wal_pusher(self) -> bool:
        entry = self.state.get("wal_pusher", {})
        if is_our_process(entry.get("pid"), WAL_PUSHER_NEEDLE):
            stop_pid(entry["pid"], name="WAL pusher", sig=signal.SIGTERM)
            entry["pid"] = None
            self._save_state()
            return True
        return False

    # -- the primary guards (continuity.failover.guard): one per region, as one would run beside its nodes ------
    def start_guards(self, started: list[str] | None = None, *, regions: list[str] | None = None) -> list[str]:
        """`continuity guard run` for each region (or `regions`) whose guard is not running; the regions started.
        Nothing when the policy has no failover.primary_guard."""
        if self.policy.failover.primary_guard is None:
            return []
        guards = self.state.setdefault("guards", {})
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        begun = []
        for region in regions or sorted({node.region for node in self.policy.topology.nodes}):
            if is_our_process(guards.get(region, {}).get("pid"), GUARD_NEEDLE):
                continue
            with open(self.logs_dir / f"guard-{region}.log", "ab") as log_handle:
                process = subprocess.Popen(
                    [sys.executable, "-m", "continuity.cli", "guard", "run", "--root", str(self.root),
                     "--region", region],
                    stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                    cwd=self.root, env=scrubbed_environment({
                        POLICY_ENV_VAR: str(policy_path().absolute()), SANDBOX_ENV_VAR: str(self.root),
                        **{k: v for k, v in os.environ.items() if k in ("PYTHONPATH", PROJECT_ENV_VAR, INCLUDE_ENV_VAR)}}))
            guards[region] = {"pid": process.pid}
            begun.append(region)
            if started is not None:
                started.append(f"guard {region}")
        self._save_state()
        return begun

    def stop_guards(self, *, regions: list[str] | None = None, sig: int = signal.SIGTERM) -> list[str]:
        stopped = []
        for region, entry in self.state.get("guards", {}).items():
            if (regions is None or region in regions) and is_our_process(entry.get("pid"), GUARD_NEEDLE):
                stop_pid(entry["pid"], name=f"guard {region}", sig=sig)
                entry["pid"] = None
                stopped.append(f"guard {region}")
        if stopped:
            self._save_state()
        return stopped

    def guard_log(self, region: str) -> str:
        path = self.logs_dir / f"guard-{region}.log"
        return path.read_text() if path.exists() else ""

    @property
    def wal_pusher_running(self) -> bool:
        return is_our_process(self.state.get("wal_pusher", {}).get("pid"), WAL_PUSHER_NEEDLE)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.state['receivers']['http_port']}"
