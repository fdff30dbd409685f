"""ProbeRoundTrigger: the requirements' 30-second health monitor, in the triggerer (no worker slot).

Every `interval` seconds it runs one probe round (database, network latency, storage, application's
synthetic transactions; continuity.health.monitoring) and logs it in one line. Rounds are news only when
the platform changes state: the first unhealthy round, a disaster score held for the policy's
`consecutive_failures` rounds, the first healthy round after either. Only then does it yield an
event, which starts a dr_health_monitor run (an AssetWatcher) — so a healthy platform costs the
scheduler nothing. Once a round sees a disaster, the rounds confirming it come every
`confirm_interval` (10 s): a lost primary is acted on within 30 s + (consecutive_failures - 1) × 10 s.
Each business function's change of state (up, down) is stored (continuity.health.availability): the history
the post-incident report measures unavailability from.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from continuity.health.availability import AvailabilityLog
from continuity.health.monitoring import RoundWatch


class ProbeRoundTrigger(BaseEventTrigger):
    """:param interval: seconds from the start of one round to the start of the next.
    :param policy_path: the policy file (default: $CONTINUITY_POLICY or include/policy.yaml)."""

    def __init__(self, *, interval: float = 30.0, policy_path: str | None = None) -> None:
        super().__init__()
        self.interval = interval
        self.policy_path = policy_path

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"interval": self.interval, "policy_path": self.policy_path})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from continuity.hooks.health import HealthProbeHook

        hook = HealthProbeHook(policy_path=self.policy_path)
        history = AvailabilityLog()
        watch: RoundWatch | None = None
        confirm_interval = self.interval
        while True:
            started = time.monotonic()
            try:
                # A round takes 0.3 s healthy and up to the probe timeouts when things fail: in a thread of its
                # own, never on asgiref's one shared thread, where it would hold up every other trigger's
                # calls (the HITL answers, the incident inbox) for as long.
                probe = await sync_to_async(hook.probe_round, thread_sensitive=False)()
                if watch is None:
                    settings = (await sync_to_async(lambda: hook.policy)()).health_monitor
                    watch = RoundWatch(consecutive_failures=settings.consecutive_failures)
                    confirm_interval = min(self.interval, settings.confirm_interval.total_seconds())
            except Exception as exc:  # the policy or a connection cannot be read: say so, try next round
                self.log.error("probe round could not run: %s: %s", type(exc).__name__, exc)
                await asyncio.sleep(self.interval)
                continue
            verdict = "healthy" if not probe.failing else ("DISASTER" if probe.disaster else "degraded")
            self.log.info("probe round %s: %s, score %s of %s, %s checks in %.2fs (%.3fs CPU)%s", probe.at.isoformat(),
                          verdict, probe.score, probe.threshold, probe.checks, probe.seconds, probe.cpu_seconds,
                          "" if not probe.failing else "; " + "; ".join(probe.failing)[:600])
            await self._record_availability(hook, history, probe)
            event = watch.observe(probe)
            if event is not None:
                self.log.warning("probe rounds: %s — %s", event.kind, event.summary[:300])
                yield TriggerEvent(event.model_dump(mode="json"))
            delay = watch.next_round_in(interval=self.interval, confirm_interval=confirm_interval)
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))

    async def _record_availability(self, hook: Any, history: AvailabilityLog, probe: Any) -> None:
        """Each function's change of state goes to storage (the post-incident report's measure of unavailability);
        kept for the next round while no location takes it."""
        changes = history.observe(probe)
        if not changes:
            return
        try:
            stored = await sync_to_async(hook.record_availability, thread_sensitive=False)(changes)
        except Exception as exc:  # the policy or a connection cannot be read: kept, tried next round
            self.log.warning("availability history not stored: %s: %s", type(exc).__name__, exc)
            return
        if stored:
            history.saved(changes)
            self.log.info("availability: %s", "; ".join(f"{c.function} {'up' if c.ok else 'DOWN'}" for c in changes))
