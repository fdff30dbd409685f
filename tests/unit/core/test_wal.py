from __future__ import annotations

import pytest

from datetime import datetime, timedelta, timezone

from continuity.postgres.node import ArchiverStatus
from continuity.backup.wal import ArchiverFailing, classify, find_gaps, segment_archived, segment_name


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


def _archiver(last: str | None, *, failed: str | None = None, failed_later: bool = False) -> ArchiverStatus:
    now = datetime.now(timezone.utc)
    failed_at = now + timedelta(seconds=1 if failed_later else -1) if failed else None
    return ArchiverStatus(archived_count=3, last_archived_wal=last, last_archived_time=now, failed_count=int(bool(failed)),
                          last_failed_wal=failed, last_failed_time=failed_at)


def test_a_segment_counts_as_archived_once_it_or_a_later_one_is() -> None:
    segment = "000000010000000000000005"
    assert segment_archived(_archiver(segment), segment, node="primary")[0] is True
    assert segment_archived(_archiver("000000010000000000000007.partial"), segment, node="primary")[0] is True
    done, reason = segment_archived(_archiver("000000010000000000000004"), segment, node="primary")
    assert done is False and reason == (f"segment {segment} of primary is not archived yet "
                                        f"(last archived: 000000010000000000000004)")
    # a failure the archiver has since recovered from does not stop the wait
    assert segment_archived(_archiver("000000010000000000000004", failed="000000010000000000000003"),
                            segment, node="primary")[0] is False


def test_a_failing_archiver_stops_the_wait_naming_the_file() -> None:
    with pytest.raises(ArchiverFailing, match="archiver on primary is failing .*000000010000000000000005.*HINT"):
        segment_archived(_archiver("000000010000000000000004", failed="000000010000000000000005", failed_later=True),
                         "000000010000000000000005", node="primary")


def test_the_fetch_socket_belongs_to_a_user_by_name_or_by_the_ids_of_another_container() -> None:
    import pwd

    from continuity.cli.common import UsageError
    from continuity.cli.wal import socket_owner

    assert socket_owner("999:999") == (999, 999)  # the postgres:15 image's postgres, seen from the pusher's container
    root = pwd.getpwnam("root")
    assert socket_owner("root") == (root.pw_uid, root.pw_gid)
    with pytest.raises(UsageError, match=r"^--socket-owner: expected a user name or UID:GID, got 'postgres:x'$"):
        socket_owner("postgres:x")
    with pytest.raises(UsageError, match=r"^--socket-owner: no OS user 'nobody-here'$"):
        socket_owner("nobody-here")
