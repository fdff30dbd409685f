"""A small writer that records every acknowledged commit: the yardstick of a switchover.

It commits one row per transaction through the application's entry point, remembers each sequence
number the server acknowledged and when, and reconnects after errors (counting them). Afterwards
`missing_on(conninfo)` says which acknowledged commits a node does not have, and `longest_gap`
is the application-visible write outage.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import psycopg

from continuity.waiting import poll

TABLE = "continuity_load_commits"


@dataclass(kw_only=True)
class _Recorder:
    """A writer thread that records every acknowledged write (an id and when) and the errors it met."""

    acknowledged: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def wait_for(self, count: int, *, timeout: float = 60) -> bool:
        """Wait until `count` writes are acknowledged in all; False if the timeout came first."""
        return poll(lambda: len(self.acknowledged) >= count, timeout=timeout, interval=0.02)

    @property
    def longest_gap(self) -> float:
        """The application-visible write outage: the longest time between two acknowledged writes."""
        times = [t for _, t in self.acknowledged]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    @property
    def ids(self) -> list[int]:
        return [i for i, _ in self.acknowledged]


@dataclass
class CommitRecorder(_Recorder):
    conninfo: str
    table: str = TABLE

    def __enter__(self) -> CommitRecorder:
        with psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None) as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (seq bigint PRIMARY KEY, "
                         f"committed_at timestamptz DEFAULT clock_timestamp())")
            start = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {self.table}").fetchone()[0]
        self._next = int(start) + 1
        self._start()
        return self

    def _run(self) -> None:
        conn = None
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True, prepare_threshold=None, connect_timeout=3)
                seq = self._next
                conn.execute(f"INSERT INTO {self.table} (seq) VALUES (%s)", (seq,))
                self.acknowledged.append((seq, time.monotonic()))
                self._next += 1
            except psycopg.Error as exc:
                self.errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
                # The row may or may not have committed; a new number keeps "acknowledged" exact.
                self._next += 1
                time.sleep(0.05)
            time.sleep(0.005)
        if conn is not None:
            conn.close()

    def missing_on(self, conninfo: str) -> list[int]:
        with psycopg.connect(conninfo, prepare_threshold=None) as conn:
            present = {row[0] for row in conn.execute(f"SELECT seq FROM {self.table}")}
        return [seq for seq, _ in self.acknowledged if seq not in present]


@dataclass
class ApplicationWriter(_Recorder):
    """A user writing annotations through the application, as a client that fails over by DNS would: it
    tries each region's URL in turn (the serving one first) and logs in again when its session is gone.
    Every annotation the application acknowledged (HTTP 201, the row committed) is recorded with its id."""

    urls: list[str]
    email: str
    password: str
    label: str
    timeout: float = 5.0

    def __enter__(self) -> ApplicationWriter:
        self._start()
        return self

    def _run(self) -> None:
        import httpx

        url_index, token, video_id = 0, None, None
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                url = self.urls[url_index % len(self.urls)]
                try:
                    if token is None:
                        answer = client.post(f"{url}/login", json={"email": self.email, "password": self.password})
                        answer.raise_for_status()
                        token = answer.json()["session"]
                    headers = {"Authorization": f"Bearer {token}"}
                    if video_id is None:
                        answer = client.get(f"{url}/videos/latest", headers=headers)
                        answer.raise_for_status()
                        video_id = answer.json()["id"]
                    answer = client.post(f"{url}/annotations", headers=headers, json={
                        "video_id": video_id, "frame": len(self.acknowledged) + 1, "label": self.label,
                        "bbox": {"x": 0, "y": 0, "w": 1, "h": 1}})
                    if answer.status_code == 401:
                        token = None  # the session is gone (a Redis that lost it): log in again
                        continue
                    answer.raise_for_status()
                    self.acknowledged.append((int(answer.json()["id"]), time.monotonic()))
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    self.errors.append(f"{url}: {type(exc).__name__}: {str(exc)[:160]}")
                    url_index += 1  # the next region's URL, as DNS failover would give
                    token = video_id = None
                    time.sleep(0.1)
                time.sleep(0.01)


def missing_annotations(conninfo: str, ids: list[int]) -> list[int]:
    """The acknowledged annotation ids a database does not have."""
    with psycopg.connect(conninfo, prepare_threshold=None) as conn:
        present = {row[0] for row in conn.execute("SELECT id FROM annotations WHERE id = ANY(%s)", (ids,))}
    return [i for i in ids if i not in present]
