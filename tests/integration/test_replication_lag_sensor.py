"""ReplicationLagSensor and its trigger against real streaming standbys."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from continuity.triggers.replication_lag import ReplicationLagTrigger

from tests.support.airflow_helpers import task_states

pytestmark = pytest.mark.usefixtures("airflow_db")
TEST_DAGS_DIR = Path(__file__).resolve().parent / "dags"


def _sensor_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(TEST_DAGS_DIR / "test_lag_sensor.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferrable"])
def test_sensor_succeeds_for_a_streaming_standby(sandbox, deferrable: bool) -> None:
    run = _sensor_dag("test_lag_sensor_deferrable" if deferrable else "test_lag_sensor_poke").test()
    assert str(run.state) == "success", task_states(run)


def test_deferrable_sensor_defers_while_the_standby_is_away_and_completes_on_the_event(sandbox) -> None:
    """dr is down: execute() defers to the trigger; the trigger fires once dr streams again."""
    from airflow.sdk.exceptions import TaskDeferred

    from continuity.sensors.replication_lag import ReplicationLagSensor

    sensor = ReplicationLagSensor(task_id="wait_for_dr", primary_conn_id="continuity_pg_primary", standby="dr",
                                  deferrable=True, poke_interval=0.5, timeout=30)
    dr = sandbox.cluster("dr")
    dr.stop()
    try:
        with pytest.raises(TaskDeferred) as deferred:
            sensor.execute(context={})
        trigger = deferred.value.trigger
        assert isinstance(trigger, ReplicationLagTrigger)
        assert deferred.value.method_name == "execute_complete"
        assert deferred.value.timeout.total_seconds() == 30

        async def first_event_after_restart():
            events = trigger.run()
            waiting = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(1.0)
            assert not waiting.done(), "the trigger must keep waiting while dr is down"
            await asyncio.to_thread(dr.start)
            return await asyncio.wait_for(waiting, timeout=30)

        event = asyncio.run(first_event_after_restart())
        assert event.payload["status"] == "success"
        sensor.execute_complete(context={}, event=event.payload)
    finally:
        dr.start()
        sandbox.wait_streaming()


def test_sensor_times_out_for_a_stopped_standby(sandbox) -> None:
    dr = sandbox.cluster("dr")
    dr.stop()
    try:
        run = _sensor_dag("test_lag_sensor_short_timeout").test()
        assert str(run.state) == "failed"
    finally:
        dr.start()
        sandbox.wait_streaming()


def test_trigger_fires_with_the_reason(sandbox) -> None:
    trigger = ReplicationLagTrigger(primary_conn_id="continuity_pg_primary", standby="sync1",
                                    max_lag_bytes=16 * 2**20, max_lag_seconds=60, poll_interval=0.5)

    async def first_event():
        async for event in trigger.run():
            return event

    event = asyncio.run(asyncio.wait_for(first_event(), timeout=30))
    assert event.payload["status"] == "success"
    assert event.payload["reason"].startswith("standby sync1 is streaming (quorum)")
    classpath, kwargs = trigger.serialize()
    assert classpath == "continuity.triggers.replication_lag.ReplicationLagTrigger"
    assert "password" not in str(kwargs) and sandbox.password("continuity_admin") not in str(kwargs)


def test_trigger_keeps_waiting_while_the_standby_is_away(sandbox) -> None:
    dr = sandbox.cluster("dr")
    dr.stop()
    trigger = ReplicationLagTrigger(primary_conn_id="continuity_pg_primary", standby="dr",
                                    max_lag_bytes=16 * 2**20, poll_interval=0.2)

    async def first_event():
        async for event in trigger.run():
            return event

    try:
        with pytest.raises(TimeoutError):
            asyncio.run(asyncio.wait_for(first_event(), timeout=2))
    finally:
        dr.start()
        sandbox.wait_streaming()
