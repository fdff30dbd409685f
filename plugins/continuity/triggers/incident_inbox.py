"""IncidentInboxTrigger: an event-driven schedule for dr_incident_inbox (Airflow's AssetWatcher).

Runs in the triggerer, no worker slot: polls the incident inbox in storage (and the local journal) and yields
one event per cause reported (a failed backup, a disaster assessment, a failover's start and outcome, a missed
RTO deadline). A cause leaves the inbox only once the dr_incident run that handles it has recorded it in the
incident (`OpenIncidentOperator`): one whose run failed before that is handed over again after
`redeliver_after` seconds (or by a restarted triggerer), and dr_incident adds the duplicate to the same open
incident.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from asgiref.sync import sync_to_async
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from continuity.incidents.records import IncidentStore, pending_causes


class IncidentInboxTrigger(BaseEventTrigger):
    """:param poll_interval: seconds between looks at the inbox."""

    def __init__(self, *, poll_interval: float = 10.0, redeliver_after: float = 600.0) -> None:
        super().__init__()
        self.poll_interval = poll_interval
        self.redeliver_after = redeliver_after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {"poll_interval": self.poll_interval,
                                                                      "redeliver_after": self.redeliver_after}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from continuity.hooks.incident import ContinuityIncidentHook

        hook = await sync_to_async(lambda: ContinuityIncidentHook(follow_topology=False))()
        locations = await sync_to_async(hook.incident_locations)()
        store = IncidentStore(locations, journal=hook.get_journal())
        handed: dict[str, float] = {}  # cause -> when its event was yielded (monotonic)
        while True:
            try:
                causes = await sync_to_async(pending_causes)(locations, journal=store.journal)
            except Exception as exc:  # storage unreachable: the next poll tries again
                self.log.warning("cannot read the incident inbox: %s", exc)
                causes = []
            now = time.monotonic()
            for name, request in causes:
                if now - handed.get(name, -self.redeliver_after) < self.redeliver_after:
                    continue  # handed over, its run not done yet
                self.log.info("cause %s (%s): %s", request.key(), request.severity, request.title)
                handed[name] = now
                yield TriggerEvent({"cause": name, "request": request.model_dump(mode="json")})
            pending = {name for name, _ in causes}
            for name in [n for n in handed if n not in pending]:
                del handed[name]  # the run that handled it removed it
            # Records that missed a location while it was gone go there once it answers again.
            try:
                await sync_to_async(store.catch_up)()
            except Exception as exc:  # the journal's disk: the next poll tries again
                self.log.warning("cannot catch up the incident journal: %s", exc)
            await asyncio.sleep(self.poll_interval)
