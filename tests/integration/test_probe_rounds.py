"""The 30-second probe rounds of the triggerer, against the real sandbox: a healthy platform yields no
event; a stopped application set is news at its first round (score 2, the function named) and its
return is news too. The trigger runs as the triggerer runs it (its async generator), rounds 0.5 s apart."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from continuity.health.availability import read_states, unavailability
from continuity.triggers.probe_rounds import ProbeRoundTrigger

pytestmark = pytest.mark.usefixtures("airflow_db")


async def _next_event(trigger: ProbeRoundTrigger, timeout: float):
    generator = trigger.run()
    try:
        return (await asyncio.wait_for(generator.__anext__(), timeout)).payload
    finally:
        await generator.aclose()


def _rounds(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("application in us-east-1")]


async def _event_within_rounds(trigger: ProbeRoundTrigger, caplog: pytest.LogCaptureFixture, *, rounds: int,
                               limit: float) -> dict | None:
    """The first event the trigger yields before `rounds` rounds have run (counted by their log lines, not by the
    clock: a round takes seconds on a loaded machine), or None."""
    generator = trigger.run()
    pending = asyncio.ensure_future(generator.__anext__())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    try:
        while len(_rounds(caplog)) < rounds and loop.time() < deadline:
            done, _ = await asyncio.wait({pending}, timeout=0.5)
            if done:
                return pending.result().payload
        return None
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await generator.aclose()


def test_rounds_are_news_only_when_the_platform_changes(sandbox, caplog) -> None:
    trigger = ProbeRoundTrigger(interval=0.5)
    # Healthy: several rounds, each with the synthetic transactions, and no event.
    assert asyncio.run(_event_within_rounds(trigger, caplog, rounds=3, limit=120)) is None
    assert len(_rounds(caplog)) >= 3, "three rounds ran within two minutes"

    sandbox.stop_application("us-east-1", state="serving")
    stopped_at = datetime.now(timezone.utc)
    try:
        event = asyncio.run(_next_event(trigger, 30))
        assert event["kind"] == "degraded" and event["round"]["score"] == 2
        assert any(f.startswith("function user_authentication: user_authentication in us-east-1: login FAILED")
                   for f in event["round"]["failing"]), event["round"]["failing"]
        assert not event["round"]["disaster"]
    finally:
        sandbox.start_application("us-east-1")
    # Rounds with the application back (a fresh generator: its first round is the first state it sees, no news).
    assert asyncio.run(_event_within_rounds(trigger, caplog, rounds=len(_rounds(caplog)) + 2, limit=120)) is None

    # Each function's way down and back up is in every required location (#31 item 7): the measure of an
    # incident's unavailability, from the first failed round to the first successful one.
    required = [sandbox.storage_locations()[name] for name in ("primary", "dr")]
    for location in required:
        history = read_states([location], stopped_at - timedelta(minutes=5), datetime.now(timezone.utc))
        measured = unavailability(history, "user_authentication", start=stopped_at, end=datetime.now(timezone.utc))
        assert measured is not None and len(measured.outages) == 1 and not measured.still_down, history
        down, up, reason = measured.outages[0]
        assert stopped_at <= down < up and "login FAILED" in reason, measured


def test_a_lost_primary_is_a_disaster_after_consecutive_rounds(sandbox) -> None:
    primary = sandbox.cluster("primary")
    primary.stop(mode="immediate")
    try:
        trigger = ProbeRoundTrigger(interval=0.5)

        async def events(n: int) -> list[dict]:
            generator, seen = trigger.run(), []
            try:
                while len(seen) < n:
                    seen.append((await asyncio.wait_for(generator.__anext__(), 60)).payload)
            finally:
                await generator.aclose()
            return seen

        degraded, disaster = asyncio.run(events(2))
        assert degraded["kind"] == "degraded" and degraded["round"]["disaster"]
        assert disaster["kind"] == "disaster" and disaster["consecutive"] == sandbox.policy.health_monitor.consecutive_failures
        assert disaster["round"]["primary_failing"] and disaster["round"]["score"] >= 5
    finally:
        primary.start()
        sandbox.wait_streaming()
        sandbox.wait_entry_point()
