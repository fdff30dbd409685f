"""Routers: how the application finds the primary, and how a failover moves it.

A router can hold new work (`pause`), send it to another node (`point_to`) and let it flow again
(`resume`). PgBouncer does all three in place, so clients stay connected through a switchover; DNS
(Route 53) can only be repointed, so its pause/resume are no-ops and clients reconnect on their own.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg

log = logging.getLogger(__name__)


class RouterError(RuntimeError):
    """The entry point could not be paused, repointed or resumed; the message says which and why."""


@dataclass(frozen=True)
class Endpoint:
    node: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.node} ({self.host}:{self.port})"


class Router(Protocol):
    def describe(self) -> str: ...

    def current(self) -> tuple[str, int] | None:
        """The (host, port) new application connections go to now."""
        ...

    def pause(self, *, timeout: float) -> None: ...

    def point_to(self, endpoint: Endpoint) -> None: ...

    def resume(self) -> None: ...


class PgBouncerRouter:
    """Repoint one PgBouncer database: PAUSE (in-flight transactions finish, new ones queue), rewrite
    the database's host/port in pgbouncer.ini, RELOAD, RESUME. Needs transaction pooling for PAUSE
    to complete while clients stay connected."""

    def __init__(self, *, admin_conninfo: str, ini_path: str | Path, database: str) -> None:
        self.admin_conninfo = admin_conninfo
        self.ini_path = Path(ini_path)
        self.database = database
        if not re.fullmatch(r"[A-Za-z0-9_]+", database):
            raise RouterError(f"PgBouncer database name {database!r}: expected letters, digits and _")

    def describe(self) -> str:
        return f"PgBouncer database {self.database} ({self.ini_path})"

    def _admin(self, command: str) -> list[tuple[Any, ...]]:
        try:
            with psycopg.connect(self.admin_conninfo, autocommit=True, prepare_threshold=None,
                                 connect_timeout=5) as conn:
                cursor = conn.execute(command)
                return cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise RouterError(f"PgBouncer admin command {command!r} failed: {str(exc).strip().splitlines()[0]}") from exc

    def _line(self) -> re.Pattern[str]:
        return re.compile(rf"^{re.escape(self.database)}\s*=.*$", re.M)

    def current(self) -> tuple[str, int] | None:
        match = self._line().search(self.ini_path.read_text())
        if not match:
            return None
        host = re.search(r"\bhost=(\S+)", match.group(0))
        port = re.search(r"\bport=(\d+)", match.group(0))
        return (host.group(1) if host else "localhost", int(port.group(1)) if port else 5432)

    def is_paused(self) -> bool:
        for row in self._admin("SHOW DATABASES"):
            if row[0] == self.database:
                return bool(row[11])
        raise RouterError(f"PgBouncer has no database {self.database!r}")

    def pause(self, *, timeout: float) -> None:
        """Block until in-flight transactions have finished; give up (and resume) after `timeout`."""
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self._admin(f"PAUSE {self.database}")
            except BaseException as exc:
                failure.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(timeout)
        if worker.is_alive():
            self.resume()
            raise RouterError(f"PgBouncer could not pause database {self.database} within {timeout:.0f}s: "
                              f"transactions were still running; resumed it")
        if failure:
            raise failure[0]

    def point_to(self, endpoint: Endpoint) -> None:
        text = self.ini_path.read_text()
        line = self._line()
        if not line.search(text):
            raise RouterError(f"{self.ini_path} has no [databases] entry for {self.database}")
        new = f"{self.database} = host={endpoint.host} port={endpoint.port} dbname={self.database}"
        tmp = self.ini_path.with_name(f".{self.ini_path.name}.tmp")
        tmp.write_text(line.sub(new, text, count=1))
        stat = self.ini_path.stat()
        tmp.chmod(stat.st_mode & 0o777)
        try:
            os.chown(tmp, stat.st_uid, stat.st_gid)
        except PermissionError:
            pass
        tmp.replace(self.ini_path)
        self._admin("RELOAD")
        log.info("PgBouncer database %s now points at %s", self.database, endpoint)

    def resume(self) -> None:
        try:
            self._admin(f"RESUME {self.database}")
        except RouterError as exc:
            if "is not paused" not in str(exc) and "not paused" not in str(exc):
                raise


class Route53Router:
    """Repoint a DNS record (CNAME or A) with an UPSERT through a boto3 Route 53 client (from the amazon
    provider's AwsBaseHook in DAGs). DNS cannot hold clients, so pause/resume do nothing."""

    def __init__(self, *, client: Any, zone_id: str, record_name: str, record_type: str = "CNAME", ttl: int = 30,
                 hostnames: dict[str, str] | None = None) -> None:
        self.client = client
        self.zone_id = zone_id
        self.record_name = record_name.rstrip(".") + "."
        self.record_type = record_type
        self.ttl = ttl
        self.hostnames = hostnames or {}

    def describe(self) -> str:
        return f"Route 53 record {self.record_name} ({self.record_type}) in zone {self.zone_id}"

    def current(self) -> tuple[str, int] | None:
        response = self.client.list_resource_record_sets(HostedZoneId=self.zone_id, StartRecordName=self.record_name,
                                                          StartRecordType=self.record_type, MaxItems="1")
        for record in response.get("ResourceRecordSets", []):
            if record["Name"] == self.record_name and record["Type"] == self.record_type:
                return (record["ResourceRecords"][0]["Value"].rstrip("."), 5432)
        return None

    def pause(self, *, timeout: float) -> None:
        log.info("%s cannot hold clients; nothing to pause", self.describe())

    def point_to(self, endpoint: Endpoint) -> None:
        value = self.hostnames.get(endpoint.node, endpoint.host)
        self.client.change_resource_record_sets(
            HostedZoneId=self.zone_id,
            ChangeBatch={"Comment": f"continuity: primary is now {endpoint.node}", "Changes": [{
                "Action": "UPSERT",
                "ResourceRecordSet": {"Name": self.record_name, "Type": self.record_type, "TTL": self.ttl,
                                      "ResourceRecords": [{"Value": value}]},
            }]})
        log.info("%s now points at %s", self.describe(), value)

    def resume(self) -> None:
        pass
