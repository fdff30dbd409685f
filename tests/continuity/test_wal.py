from __future__ import annotations

import pytest

from continuity.wal import classify, find_gaps, segment_name


@pytest.mark.parametrize(
    ("name", "kind", "timeline", "segno"),
    [
        ("000000010000000000000003", "segment", 1, 3),
        ("0000000200000001000000FF", "segment", 2, 0x1FF),
        ("00000002.history", "history", 2, None),
        ("000000010000000000000002.00000028.backup", "backup", 1, 2),
        ("000000010000000000000009.partial", "partial", 1, 9),
    ],
)
def test_classify(name: str, kind: str, timeline: int, segno: int | None) -> None:
    wal = classify(name)
    assert (wal.kind, wal.timeline, wal.segno) == (kind, timeline, segno)
    assert wal.backup_id == f"wal-{name}"


@pytest.mark.parametrize("name", ["", "archive_status", ".000000010000000000000003.123.tmp", "00000001000000000000003"])
def test_not_wal(name: str) -> None:
    assert classify(name) is None


def test_segment_name_round_trip_across_a_log_boundary() -> None:
    assert segment_name(1, 0xFF) == "0000000100000000000000FF"
    assert segment_name(1, 0x100) == "000000010000000100000000"
    assert classify(segment_name(3, 0x1234)).segno == 0x1234


def test_gaps_per_timeline_and_from_the_base_backup() -> None:
    names = [segment_name(1, n) for n in (3, 4, 6)] + [segment_name(2, n) for n in (6, 7)] + ["00000002.history"]
    assert find_gaps(names) == [segment_name(1, 5)]
    assert find_gaps(names, since=segment_name(1, 1)) == [segment_name(1, 1), segment_name(1, 2), segment_name(1, 5)]
    assert find_gaps([segment_name(1, 0xFE), segment_name(1, 0x100)]) == ["0000000100000000000000FF"]
    assert find_gaps([]) == []
