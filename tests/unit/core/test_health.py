"""The weighted failure score and the reason strings, on real Check and StandbyReplication values."""

from __future__ import annotations

import pytest

from continuity.health.checks import Check, _standby_names, assess, lag_verdict
from continuity.policy.loading import load_policy
from continuity.postgres.node import StandbyReplication

POLICY = load_policy()
MiB = 2**20


def _row(*, state: str = "streaming", lag: int | None = 0, seconds: float | None = 0.0) -> StandbyReplication:
    return StandbyReplication(application_name="dr", state=state, sync_state="async", sent_lsn="0/3000000",
                              replay_lsn="0/3000000", lag_bytes=lag, replay_lag_seconds=seconds)


def test_lag_within_limit_says_so() -> None:
    ok, reason = lag_verdict(_row(lag=3 * MiB + MiB // 10), standby="dr", max_lag_bytes=16 * MiB)
    assert ok
    assert reason == "standby dr is streaming (async) 3.1 MiB and 0.0s behind, within the 16.0 MiB limit"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (None, "standby dr is not connected to the primary (absent from pg_stat_replication)"),
        (_row(state="catchup"), "standby dr is in state 'catchup', not streaming"),
        (_row(lag=17 * MiB), "standby dr is 17.0 MiB behind, over the 16.0 MiB limit"),
        (_row(seconds=400.0), "standby dr replays 400.0s behind, over the 300s limit"),
    ],
)
def test_lag_over_limit_names_standby_and_limit(row: StandbyReplication | None, expected: str) -> None:
    ok, reason = lag_verdict(row, standby="dr", max_lag_bytes=16 * MiB, max_lag_seconds=300)
    assert not ok
    assert reason == expected


def _check(component: str, healthy: bool) -> Check:
    return Check(component, f"{component} thing", healthy, f"{component} is {'fine' if healthy else 'broken'}")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("failing", "score", "disaster"),
    [
        ([], 0, False),
        (["storage"], 1, False),
        (["network"], 2, False),
        (["application"], 2, False),
        (["database"], 3, True),
        (["network", "storage"], 3, True),
        (["application", "network"], 4, True),
        (["network", "network"], 2, False),  # a component counts once, however many checks fail
        (["configuration", "archiving"], 0, False),
        (["database", "application", "network", "storage"], 8, True),
    ],
)
def test_requirements_weighted_failure_score(failing: list[str], score: int, disaster: bool) -> None:
    checks = [_check(c, False) for c in failing] + [_check("database", True)] * (not failing)
    assessment = assess(POLICY, checks)
    assert assessment.score == score
    assert assessment.disaster is disaster
    assert assessment.healthy is (not failing)


def test_summary_names_every_failing_check() -> None:
    assessment = assess(POLICY, [
        Check("network", "standby dr", False, "node dr is unreachable"),
        Check("storage", "storage dr", False, "location dr is unreachable"),
        Check("database", "primary primary", True, "fine"),
    ])
    assert assessment.summary() == (
        "DISASTER THRESHOLD REACHED: failure score 3 (threshold 3); 2 failing check(s): "
        "standby dr: node dr is unreachable; storage dr: location dr is unreachable"
    )


@pytest.mark.parametrize(
    ("setting", "names"),
    [("sync1", {"sync1"}), ("sync1, sync2", {"sync1", "sync2"}), ("FIRST 1 (sync1, sync2)", {"sync1", "sync2"}),
     ('ANY 1 ("sync1",dr)', {"sync1", "dr"}), ("", set())],
)
def test_synchronous_standby_names_forms(setting: str, names: set[str]) -> None:
    assert _standby_names(setting) == names
