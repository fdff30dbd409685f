"""Probe rounds every 30 seconds: the requirements' health monitor cadence, and when a round is news.

A round runs the same checks as dr_health_monitor's database, network, storage and application
tasks (continuity.health.checks), weighs them (database 3, application 2, network 2, storage 1) and keeps
the last rounds. `RoundWatch` decides what deserves a DAG run, so a healthy platform costs the
scheduler nothing: the first unhealthy round after a healthy one (`degraded`), a disaster score
held for the policy's `consecutive_failures` rounds (`disaster`, the ground for an automatic
failover), and the first healthy round after either (`recovered`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel

from continuity.health.checks import Check, assess
from continuity.policy.model import Policy
from continuity.postgres.node import NodeUnreachable, PostgresNode


class FunctionProbe(BaseModel):
    """One business function's synthetic transaction in a round (continuity.health.probes)."""

    ok: bool
    reason: str


class ProbeRound(BaseModel):
    at: datetime
    seconds: float
    cpu_seconds: float = 0.0  # this thread's CPU time for the round (the monitor's own cost)
    score: int
    threshold: int
    disaster: bool
    primary_failing: bool
    failing: list[str]  # "subject: reason", each failing check
    checks: int
    region: str | None = None  # where the application was probed (the primary's region)
    functions: dict[str, FunctionProbe] = {}  # each business function whose transaction ran this round


class RoundEvent(BaseModel):
    kind: Literal["degraded", "disaster", "recovered"]
    consecutive: int  # unhealthy (or disaster) rounds in a row, this one included
    round: ProbeRound
    summary: str


def check_latency(nodes: dict[str, PostgresNode], *, limit_seconds: float) -> list[Check]:
    """Each node's round trip from here (connect and SELECT 1): the network between the regions' endpoints."""
    checks = []
    for name, node in nodes.items():
        started = time.monotonic()
        try:
            node.query_one("SELECT 1 AS ok")
        except NodeUnreachable as exc:
            checks.append(Check("network", f"latency to {name}", False, f"node {name} unreachable: {exc}"))
            continue
        elapsed = time.monotonic() - started
        ok = elapsed <= limit_seconds
        checks.append(Check("network", f"latency to {name}", ok,
                            f"node {name} answered in {elapsed * 1000:.0f} ms "
                            + ("within" if ok else "over") + f" the {limit_seconds * 1000:.0f} ms limit",
                            {"seconds": round(elapsed, 4)}))
    return checks


def run_round(policy: Policy, check_groups: list[Callable[[], list[Check]]],
              clock: Callable[[], datetime] | None = None, *, region: str | None = None) -> ProbeRound:
    """Run each group of checks (a group that raises is one failing check, named) and weigh them. `region`:
    where the application's checks ran."""
    started_at = (clock or (lambda: datetime.now(timezone.utc)))()
    started, cpu_started = time.monotonic(), time.thread_time()
    checks: list[Check] = []
    for group in check_groups:
        try:
            checks.extend(group())
        except Exception as exc:  # a probe that cannot run is a finding, never a crashed monitor
            name = getattr(group, "__name__", "check")
            checks.append(Check("configuration", name, False, f"{name} could not run: {type(exc).__name__}: {exc}"))
    assessment = assess(policy, checks)
    return ProbeRound(
        at=started_at, seconds=round(time.monotonic() - started, 3),
        cpu_seconds=round(time.thread_time() - cpu_started, 3), score=assessment.score,
        threshold=assessment.threshold, disaster=assessment.disaster,
        primary_failing=any(c.component == "database" and c.subject.startswith("primary ") for c in assessment.failing),
        failing=[f"{c.subject}: {c.reason}" for c in assessment.failing], checks=len(checks), region=region,
        functions={c.subject.removeprefix("function "): FunctionProbe(ok=c.healthy, reason=c.reason)
                   for c in checks if c.component == "application" and c.subject.startswith("function ")})


class RoundWatch:
    """Consecutive unhealthy and disaster rounds, and the events worth a DAG run."""

    def __init__(self, *, consecutive_failures: int) -> None:
        self.consecutive_failures = consecutive_failures
        self.unhealthy = 0
        self.disasters = 0
        self.disaster_reported = False

    def next_round_in(self, *, interval: float, confirm_interval: float) -> float:
        """Seconds until the next round: sooner while a disaster is being confirmed (seen, not yet reported)."""
        confirming = 0 < self.disasters < self.consecutive_failures and not self.disaster_reported
        return confirm_interval if confirming else interval

    def observe(self, probe: ProbeRound) -> RoundEvent | None:
        if not probe.failing:
            was_unhealthy = self.unhealthy
            self.unhealthy = self.disasters = 0
            self.disaster_reported = False
            if was_unhealthy:
                return RoundEvent(kind="recovered", consecutive=0, round=probe,
                                  summary=f"healthy again after {was_unhealthy} unhealthy round(s)")
            return None
        self.unhealthy += 1
        # Only a failing primary counts toward an automatic failover; any other disaster is an alert.
        self.disasters = self.disasters + 1 if probe.disaster else 0
        if probe.disaster and self.disasters >= self.consecutive_failures and not self.disaster_reported:
            self.disaster_reported = True
            return RoundEvent(kind="disaster", consecutive=self.disasters, round=probe,
                              summary=f"failure score {probe.score} (threshold {probe.threshold}) for {self.disasters} "
                                      f"consecutive rounds: " + "; ".join(probe.failing)[:1500])
        if self.unhealthy == 1:
            return RoundEvent(kind="degraded", consecutive=1, round=probe,
                              summary=f"failure score {probe.score}: " + "; ".join(probe.failing)[:1500])
        return None
