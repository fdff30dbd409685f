"""The sample application per region: web instances, workers, its Redis (one part of `continuity_lab.sandbox.Sandbox`)."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from continuity.postgres.cluster import free_port, port_is_free, scrubbed_environment, stop_pid, wait_for_port
from continuity_lab.processes import S3_ACCESS_KEY, SandboxError, is_our_process, start_redis_server

log = logging.getLogger(__name__)


class ApplicationPart:
    """The sample application per region: web instances, workers, its Redis."""

    # -- Redis per region: the application's sessions, cache and processing queue -----------------
    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    def _start_redis(self, started: list[str]) -> None:
        """A Redis in the primary region and one in the DR region replicating from it (Debian's redis-server)."""
        redis = self.state.setdefault("redis", {})
        password = self.state["secrets"].setdefault("redis", secrets.token_urlsafe(24))
        topology = self.policy.topology
        for region, role in ((topology.primary_region, "primary"), (topology.dr_region, "replica")):
            entry = redis.setdefault(region, {"port": free_port(), "pid": None, "role": role})
            if is_our_process(entry.get("pid"), "redis-server"):
                continue
            if not port_is_free(entry["port"]):
                entry["port"] = free_port()
            extra = [f"masterauth {password}"]
            if entry["role"] == "replica":
                # Whichever region's Redis is the primary now (a failover swaps them).
                upstream = next((e for r, e in redis.items() if e["role"] == "primary"), redis[topology.primary_region])
                extra.append(f"replicaof 127.0.0.1 {upstream['port']}")
            entry["pid"] = start_redis_server(directory=self.redis_dir / region, port=entry["port"], password=password,
                                              log_file=self.logs_dir / f"redis-{region}.log", extra=extra)
            started.append(f"redis {region}")
            self._save_state()
            wait_for_port(entry["port"], what=f"Redis in {region}")

    def redis_client(self, region: str) -> Any:
        import redis as redis_py

        entry = self.state["redis"][region]
        return redis_py.Redis(host="127.0.0.1", port=entry["port"], password=self.password("redis"), socket_timeout=5)

    # -- the sample application: web instances and processing workers per region ------------------
    PROBE_EMAIL = "dr-probe@continuity.invalid"

    def _ensure_probe_user(self) -> None:
        """The user the synthetic transactions log in as (its password a sandbox secret)."""
        from continuity_lab.sampleapp import ensure_user

        password = self.state["secrets"].setdefault("app_probe", secrets.token_urlsafe(24))
        self._save_state()
        with psycopg.connect(self.app_conninfo(), prepare_threshold=None) as conn:
            ensure_user(conn, email=self.PROBE_EMAIL, password=password)

    def application_region(self, region: str) -> dict[str, Any]:
        """The recorded state of `region`'s application tier (created from the policy the first time)."""
        application = self.policy.application
        if application is None or region not in application.regions:
            raise SandboxError(f"the policy has no application region {region!r}")
        regions = self.state.setdefault("application", {})
        if region not in regions:
            spec = application.regions[region]
            regions[region] = {
                "state": spec.state,
                "web": [{"name": f"web-{region}-{i + 1}", "port": free_port(), "pid": None}
                        for i in range(spec.web_instances)],
                "workers": [{"name": f"worker-{region}-{i + 1}", "pid": None} for i in range(spec.workers)],
            }
        return regions[region]

    def _application_environment(self, region: str, instance: str) -> dict[str, str]:
        spec = self.policy.application.regions[region]
        redis_port = self.state["redis"][region]["port"]
        return scrubbed_environment({
            "CONTINUITY_APP_DSN": self.app_conninfo(),
            "CONTINUITY_APP_REDIS_URL": f"redis://:{self.password('redis')}@127.0.0.1:{redis_port}/0",
            "CONTINUITY_APP_S3_ENDPOINT": self.region_s3_endpoint(region),
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": self.password("s3_secret_key"),
            "CONTINUITY_APP_REGION": region, "CONTINUITY_APP_VIDEO_BUCKET": spec.video_bucket,
            "CONTINUITY_APP_INSTANCE": instance,
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        })

    def _start_application(self, started: list[str]) -> None:
        if self.policy.application is None:
            return
        for region in self.policy.application.regions:
            if self.application_region(region)["state"] == "serving":
                started += self.start_application(region)

    def start_application(self, region: str) -> list[str]:
        """Start `region`'s web instances and workers (those not running); returns what was started."""
        self.reload()
        entry = self.application_region(region)
        launched: list[str] = []
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        for web in entry["web"]:
            if is_our_process(web.get("pid"), "continuity_lab.sampleapp"):
                continue
            if not port_is_free(web["port"]):
                web["port"] = free_port()
            web["pid"] = self._spawn_application(region, web["name"], ["serve", "--port", str(web["port"])])
            launched.append(web["name"])
        for worker in entry["workers"]:
            if not is_our_process(worker.get("pid"), "continuity_lab.sampleapp"):
                worker["pid"] = self._spawn_application(region, worker["name"], ["worker"])
                launched.append(worker["name"])
        entry["state"] = "serving"
        self._save_state()
        for web in entry["web"]:
            wait_for_port(web["port"], what=f"application instance {web['name']}")
        if launched:
            log.info("application in %s started: %s", region, ", ".join(launched))
            self.write_connections()
        return [f"application {name}" for name in launched]

    def _spawn_application(self, region: str, name: str, args: list[str]) -> int:
        with open(self.logs_dir / f"{name}.log", "ab") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "continuity_lab.sampleapp", *args], stdout=log_handle, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.root,
                env=self._application_environment(region, name))  # secrets by environment, never argv
        return process.pid

    def stop_application(self, region: str, *, state: str = "standby") -> list[str]:
        """Stop `region`'s web instances and workers; the region is then recorded as `state`."""
        self.reload()
        if region not in self.state.get("application", {}):
            return []
        entry = self.state["application"][region]
        stopped = []
        for item in [*entry["web"], *entry["workers"]]:
            if is_our_process(item.get("pid"), "continuity_lab.sampleapp"):
                stop_pid(item["pid"], name=item["name"], sig=signal.SIGTERM)
                stopped.append(item["name"])
            item["pid"] = None
        entry["state"] = state
        self._save_state()
        return stopped

    def application_running(self, region: str) -> dict[str, bool]:
        self.reload()
        entry = self.state.get("application", {}).get(region)
        if entry is None:
            return {}
        return {item["name"]: is_our_process(item.get("pid"), "continuity_lab.sampleapp")
                for item in [*entry["web"], *entry["workers"]]}

    def application_urls(self, region: str) -> list[str]:
        return [f"http://127.0.0.1:{web['port']}" for web in self.application_region(region)["web"]]

    def probe_target(self, region: str) -> Any:
        from continuity.health.probes import ProbeTarget

        urls = self.application_urls(region)
        return ProbeTarget(region=region, url=urls[0], instance_urls=urls)
