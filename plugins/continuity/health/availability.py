"""Each business function's availability as the probe rounds saw it: the history that measures unavailability.

The triggerer's probe rounds (every 30 s) run each function's synthetic transaction. `AvailabilityLog` keeps
the last state of each and yields only changes (up → down, down → up, and the first state seen), so a healthy
platform writes nothing; each change is stored in every required location under
`health/availability/<day>/`. `unavailability` reads that history back: from a function's first failed round
to its first successful one, which is what the post-incident report prices (not the entry point's pause, not
the incident record's open → resolved).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from continuity.health.monitoring import ProbeRound
from continuity.storage.locations import StorageLocation

AVAILABILITY_PREFIX = "health/availability/"
# Unsaved changes kept while no location answers: beyond this, the oldest go (said in the log); a function's
# state is re-sent whole by the next change anyway.
MAX_UNSAVED = 1000


class FunctionState(BaseModel):
    """A function seen up or down by a probe round, where its state changed (or was first seen)."""

    model_config = ConfigDict(extra="forbid")

    function: str
    region: str | None
    ok: bool
    at: datetime
    reason: str

    def key(self) -> str:
        return (f"{AVAILABILITY_PREFIX}{self.at:%Y-%m-%d}/{self.at:%H%M%S%f}-{self.function}-"
                f"{'up' if self.ok else 'down'}.json")


class AvailabilityLog:
    """The last state of each function, and the changes not stored yet."""

    def __init__(self) -> None:
        self.known: dict[str, bool] = {}
        self.unsaved: list[FunctionState] = []

    def observe(self, probe: ProbeRound) -> list[FunctionState]:
        """This round's changes added to those still unsaved; returns everything to store now."""
        for function, outcome in sorted(probe.functions.items()):
            if self.known.get(function) != outcome.ok:
                self.known[function] = outcome.ok
                self.unsaved.append(FunctionState(function=function, region=probe.region, ok=outcome.ok,
                                                  at=probe.at, reason=outcome.reason[:500]))
        del self.unsaved[:-MAX_UNSAVED]
        return list(self.unsaved)

    def saved(self, states: Iterable[FunctionState]) -> None:
        done = {state.key() for state in states}
        self.unsaved = [state for state in self.unsaved if state.key() not in done]


def store_states(locations: Sequence[StorageLocation], states: Sequence[FunctionState], *,
                 report: Callable[[str], None]) -> int:
    """Each state in every location that answers; how many locations took all of them."""
    stored = 0
    for location in locations:
        try:
            for state in states:
                location.put_bytes(state.key(), state.model_dump_json().encode())
        except Exception as exc:  # unreachable or refusing (any client error): the other locations take it
            report(f"availability history not stored in {location.name}: {type(exc).__name__}: {exc}")
            continue
        stored += 1
    return stored


def read_states(locations: Sequence[StorageLocation], start: datetime, end: datetime) -> list[FunctionState]:
    """Every change stored from `start` to `end` (the union over the locations that answer), oldest first."""
    found: dict[str, FunctionState] = {}
    day = start.date()
    while day <= end.date():
        for location in locations:
            try:
                keys = list(location.list(f"{AVAILABILITY_PREFIX}{day:%Y-%m-%d}/"))
                for key in keys:
                    if key in found:
                        continue
                    state = FunctionState.model_validate(json.loads(location.get_bytes(key)))
                    if start <= state.at <= end:
                        found[key] = state
            except Exception:  # unreachable or unreadable: another location holds the same history
                continue
        day += timedelta(days=1)
    return sorted(found.values(), key=lambda s: s.at)


class Unavailable(BaseModel):
    """A function's measured unavailability over a window: each outage from its first failed round to its
    first successful one (an outage still going at the window's end ends there)."""

    function: str
    seconds: float
    outages: list[tuple[datetime, datetime, str]]  # (down, up, the first failure's reason)
    still_down: bool

    def describe(self, region: str | None = None) -> str:
        where = f" in {region}" if region else ""
        if not self.outages:
            return f"probe rounds{where}: {self.function} never failed"
        spans = "; ".join(f"{down:%H:%M:%S} → {up:%H:%M:%S} ({reason[:120]})" for down, up, reason in self.outages)
        return (f"probe rounds{where}: {self.function} failed {spans}"
                + (" (still failing at the end)" if self.still_down else ""))


def unavailability(states: Sequence[FunctionState], function: str, *, start: datetime,
                   end: datetime) -> Unavailable | None:
    """The outages of `function` that overlap [start, end], from `states` (read with some lookback before
    `start`: an outage that began before the incident was opened counts from its first failed round).
    None when the history holds nothing of this function: not measured."""
    mine = [s for s in states if s.function == function and s.at <= end]
    if not mine:
        return None
    outages: list[tuple[datetime, datetime, str]] = []
    down_since: FunctionState | None = None
    for state in mine:
        if not state.ok and down_since is None:
            down_since = state
        elif state.ok and down_since is not None:
            if state.at >= start:
                outages.append((down_since.at, state.at, down_since.reason))
            down_since = None
    if down_since is not None:
        outages.append((down_since.at, end, down_since.reason))
    return Unavailable(function=function, seconds=round(sum((up - down).total_seconds() for down, up, _ in outages), 3),
                       outages=outages, still_down=down_since is not None)
