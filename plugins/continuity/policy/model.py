"""The policy: the requirements' business impact analysis, objectives, topology and storage as data.

`continuity.policy.loading.load_policy()` reads `include/policy.yaml` (or another file) into these typed
models. Every problem is reported as ``FILE: key.path: what was expected, got what`` so an operator can fix
the file without reading this code.

Longer than 600 lines on purpose: one model per section of include/policy.yaml, in the file's order, so the
schema and the file it validates read side by side; loading, the project's paths and the lab's kinds are
elsewhere (policy.loading, policy.project, policy.kinds).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, model_validator

from continuity.policy.kinds import ProvingKind



class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file, the key path and the problem."""


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdwy])\s*$")
_SIZE_UNITS = {
    "B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


def parse_duration(value: Any) -> timedelta:
    """Parse '90s', '15m', '4h', '30d', '2w', '1y' (a year is 365 days)."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected a duration like '15m', got {value!r}")
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _DURATION_UNITS[unit])


def parse_size(value: Any) -> int:
    """Parse '16MiB', '512kB', '1GiB' or a plain byte count into bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"expected a size like '16MiB', got {value!r}")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit])


def parse_frequency(value: Any) -> timedelta | str:
    """'continuous' (replication, no schedule) or a duration."""
    if value == "continuous":
        return value
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(f"expected 'continuous' or a duration like '15m', got {value!r}") from None


def format_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit in ("y", "d", "h", "m"):
        size = _DURATION_UNITS[unit]
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Frequency = Annotated[timedelta | str, PlainValidator(parse_frequency)]
ByteSize = Annotated[int, BeforeValidator(parse_size)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]*$")]


def _node_name(value: str) -> str:
    # A node's name is its physical replication slot's on its upstream and its application_name there
    # (synchronous_standby_names): PostgreSQL takes only lowercase letters, digits and '_' in a slot name
    # (at most 63), so a '-' would leave a standby with no slot to stream from after a failover.
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,62}", value):
        raise ValueError(f"expected a node name of lowercase letters, digits and '_' starting with a letter, at most "
                         f"63 (it names the node's replication slot, which allows no '-' or capitals), got {value!r}")
    return value


NodeName = Annotated[str, AfterValidator(_node_name)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Objective(_Model):
    target: Duration
    maximum: Duration


class BusinessFunction(_Model):
    title: str
    criticality: Literal["critical", "high", "medium", "low"]
    tier: str
    rto: Objective
    rpo: Objective
    data_categories: list[str]
    depends_on: list[str]
    impact: str


class Tier(_Model):
    services: list[str]
    target: Duration
    maximum: Duration
    strategy: str


class DataCategory(_Model):
    rpo: Objective
    backup_frequency: Frequency
    method: str
    backup_kinds: list[ProvingKind] = []
    # What a drill measures this category's RPO from: the database's recovered marker, or the age of
    # the newest config backup. Absent: nothing measures it yet, and reports say `not measured`.
    measured_by: Literal["database", "config_backup", "object_replication"] | None = None


class NodeHost(_Model):
    """Where a node's PostgreSQL lives on its host: what node control over SSH acts on."""

    # An Airflow SSH connection that logs in as the PostgreSQL OS user of the node's host.
    ssh_conn_id: str
    data_directory: str
    bin_directory: str = "/usr/lib/postgresql/15/bin"
    # How the other nodes reach this one (replication, pg_rewind); port and socket are the server's own.
    address: str
    port: int = 5432
    socket_directory: str = "/var/run/postgresql"
    # Relative to the data directory, included by postgresql.conf: failover rewrites the upstream and
    # synchronous settings in it and leaves every other line as it was.
    settings_file: str = "continuity.conf"
    # The node's own password file for replication and pg_rewind (absent: libpq's ~/.pgpass of the OS user).
    passfile: str | None = None
    replication_user: str = "replicator"
    rewind_user: str = "continuity_admin"
    # pg_ctl's server log when failover starts the node (absent: pg_ctl.log in the data directory).
    log_file: str | None = None
    # Set with primary_conninfo when the node follows a new upstream (e.g. `continuity wal fetch %f %p`).
    restore_command: str | None = None


class Node(_Model):
    name: NodeName
    role: Literal["primary", "standby"]
    region: str
    conn_id: str
    backup_conn_id: str | None = None
    synchronous: bool = False
    host: NodeHost | None = None


class EntryPoint(_Model):
    kind: Literal["pgbouncer", "route53", "direct"]
    conn_id: str
    admin_conn_id: str | None = None
    # PgBouncer: a generic connection whose extra.ini_path names the ini file failover rewrites (not a
    # libpq setting, so it stays off the Postgres connections), and the [databases] entry it repoints
    # (default: the first of topology.databases).
    config_conn_id: str | None = None
    database: str | None = None


def synchronous_standby_names(standbys: Sequence[str], *, quorum: int = 1) -> str:
    """PostgreSQL's synchronous_standby_names for a primary whose commits wait for `quorum` of `standbys` (any of
    them: one stopped standby of two never freezes the commits); empty with none."""
    if not standbys:
        return ""
    return f"ANY {min(quorum, len(standbys))} ({', '.join(standbys)})"


class Topology(_Model):
    primary_region: str
    dr_region: str
    databases: list[str] = Field(min_length=1)
    nodes: list[Node] = Field(min_length=1)
    entry_point: EntryPoint
    # A commit waits for this many of the synchronous standbys (`ANY n (...)`): with two and 1, losing either
    # standby leaves commits flowing, with no committed transaction on the primary alone.
    synchronous_quorum: int = Field(default=1, ge=1)
    # Host-level control of the nodes for failover (stop, fence, rewind): `sandbox` for the local
    # sandbox, `ssh` for each node's host over SSH (every node needs `host`); absent, dr_failover stops
    # in preflight saying none is configured.
    node_control: Literal["sandbox", "ssh"] | None = None

    @model_validator(mode="after")
    def _ssh_hosts(self) -> Topology:
        if self.node_control == "ssh":
            missing = [node.name for node in self.nodes if node.host is None]
            if missing:
                raise ValueError(f"node_control is 'ssh' but node(s) {', '.join(missing)} have no host (its "
                                 f"ssh_conn_id, data_directory and address)")
        return self

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node named {name!r} in the policy's topology (known: {known})")

    @property
    def primary(self) -> Node:
        return next(n for n in self.nodes if n.role == "primary")

    @property
    def standbys(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "standby"]

    def with_primary(self, name: str) -> Topology:
        """The same topology after `name` became the primary (a switchover or failover)."""
        self.node(name)  # a clear KeyError for an unknown node
        nodes = [n.model_copy(update={"role": "primary" if n.name == name else "standby"}) for n in self.nodes]
        return self.model_copy(update={"nodes": nodes})


class Location(_Model):
    name: Name
    kind: Literal["s3", "file"]
    region: str
    required: bool = True
    storage_class: str = "STANDARD"
    # s3
    bucket: str | None = None
    prefix: str = ""
    conn_id: str | None = None
    server_side_encryption: Literal["AES256", "aws:kms"] | None = None  # on top of our own encryption
    # file
    path: str | None = None


class Storage(_Model):
    locations: list[Location] = Field(min_length=1)
    # "Required" means required while reachable: a backup or WAL segment a required location does not take
    # is kept in the others and marked degraded (continuity.storage.degraded) until the catch-up copies it.
    # A location missing backups for longer than this is a critical alarm of the health monitor (before it,
    # a warning to the immediate team): protection then rests on fewer regions than the policy promises.
    max_degraded: Duration = timedelta(hours=1)

    def location(self, name: str) -> Location:
        for location in self.locations:
            if location.name == name:
                return location
        known = ", ".join(loc.name for loc in self.locations)
        raise KeyError(f"no storage location named {name!r} in the policy (known: {known})")

    def required(self) -> set[str]:
        """The names of the locations every backup and WAL segment must reach (`required: true`)."""
        return {loc.name for loc in self.locations if loc.required}


class Bucket(_Model):
    """An S3 bucket of the application (source) or its copy (replica), reached through an AWS connection."""

    region: str
    bucket: str
    prefix: str = ""
    conn_id: str


class ObjectRetention(_Model):
    """How long replica versions live: `standard` days in the bucket's class, then `archive_class` until
    `archive_until`; `indefinite` keeps every version forever (user uploads)."""

    indefinite: bool = False
    standard: Duration | None = None
    archive_class: str | None = None
    archive_until: Duration | None = None


class ObjectDeletes(_Model):
    """A source delete is recorded, never copied as a deletion; more than `max_per_run` in one run is an
    alarm that stops the run (a mass delete: ransomware, a bad script)."""

    max_per_run: int = Field(ge=0)


class ObjectLock(_Model):
    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    period: Duration


class DatabaseReference(_Model):
    """The column of the application database that holds an object's key (the consistency check)."""

    database: str
    table: Name
    key_column: Name
    size_column: Name | None = None
    sha256_column: Name | None = None
    # When the row was written: a row newer than everything the replica has copied is pending replication
    # (the category's RPO exposure), not a missing object.
    time_column: Name | None = None


class ObjectCategory(_Model):
    source: Bucket
    replicas: list[Bucket] = Field(min_length=1)
    interval: Duration
    retention: ObjectRetention
    deletes: ObjectDeletes
    object_lock: ObjectLock | None = None
    database_reference: DatabaseReference | None = None


class Objects(_Model):
    """Section 4.1 file_storage_backups: the application's objects, replicated by dr_object_replication."""

    schedule: str
    part_size: ByteSize = 8 * 2**20
    copy_workers: int = Field(default=4, ge=1, le=64)  # copies in flight at once; memory: one part each
    # Between listings of every version a run compares the current objects with the previous run's listing;
    # a version overwritten or deleted before the next run waits for the next listing of every version.
    every_version_listing: Duration = timedelta(hours=1)
    categories: dict[Name, ObjectCategory]


Severity = Literal["low", "medium", "high", "critical"]
SEVERITY_ORDER: dict[str, int] = {"low": 1, "medium": 2, "high": 3, "critical": 4}


# Every way the incident DAG can tell people (notifiers.incident.channel_senders has one sender each): a method
# outside this list would be dropped at delivery without a word, so the policy refuses it.
NotificationMethod = Literal["slack", "pagerduty", "email", "status_page", "in_app_banner"]


class Audience(_Model):
    """Who is told of an incident, how, by when after it starts, and who must approve first."""

    recipients: dict[str, list[str]] = {}  # per channel (slack, email, pagerduty, ...): addresses or channels
    methods: list[NotificationMethod] = Field(min_length=1)
    deadline: Duration | None = None  # None: "as appropriate" (the public)
    approval: Literal["none", "approver", "ceo"] = "none"
    external: bool = False


class StakeholderGroup(_Model):
    """Section 5.2: told when the incident's severity reaches the threshold; escalated when not
    acknowledged within the escalation time."""

    audience: str
    threshold: Severity
    escalation: Duration


class Communication(_Model):
    """Section 5: the communication matrix, stakeholder routing and the update interval."""

    audiences: dict[Name, Audience]
    stakeholder_groups: dict[Name, StakeholderGroup]
    update_interval: Duration
    status_page_url: str
    report_due: Duration = timedelta(hours=48)
    templates: dict[Name, str]  # template name -> file under include/templates/
    from_email: str = "continuity@example.com"
    # The providers' connections each channel goes through (Slack incoming webhook, PagerDuty Events v2, SMTP).
    connections: dict[Literal["slack", "pagerduty", "email"], str] = {
        "slack": "continuity_slack", "pagerduty": "continuity_pagerduty", "email": "continuity_smtp"}
    # Who may answer an approval, per `approval` role of the audiences: Airflow user ids (the auth manager's).
    # A role not listed: anyone allowed to answer the DAG's human-in-the-loop tasks.
    approvers: dict[Literal["approver", "ceo"], list[str]] = {}
    # Slack channel -> its incoming webhook's connection (a webhook posts to one channel); others: connections.slack.
    slack_webhooks: dict[str, str] = {}
    # Where the application reads its in-app banner (`banner.json` under each bucket's prefix).
    banners: list[Bucket] = []

    def escalation(self) -> tuple[str, StakeholderGroup]:
        """The group told when an incident is not acknowledged in time: the one with the shortest
        escalation time (its escalation time is the acknowledgement deadline)."""
        return min(self.stakeholder_groups.items(), key=lambda item: item[1].escalation)

    def groups_for(self, severity: str) -> list[str]:
        """The stakeholder groups an incident of `severity` reaches (severity at or above their threshold)."""
        return [name for name, group in self.stakeholder_groups.items()
                if SEVERITY_ORDER[severity] >= SEVERITY_ORDER[group.threshold]]


class FullBackups(_Model):
    schedule: str
    method: str
    # zstd: the archive compresses (pg_dump dumps uncompressed); pg_dump: a logical dump is compressed by
    # pg_dump itself and stored as it is (physical backups use zstd either way). bench/tools.py compares them.
    compression: Literal["zstd", "pg_dump"]
    encryption: Literal["aes-256-gcm"]
    retention: dict[str, Duration]
    keep_last: int = Field(ge=1)
    backup_from_standby: str | None = None
    # How long a failed backup task waits before its one retry (a crashed worker, an endpoint down).
    retry_delay: Duration = timedelta(minutes=5)


class IncrementalBackups(_Model):
    frequency: Duration
    method: str
    retention: dict[str, Duration]
    # PostgreSQL's archive_timeout: with WAL written, a segment closes (and is pushed) at least this often.
    archive_timeout: Duration = timedelta(seconds=60)
    # archive_command queues closed segments in the spool for the WAL pusher; with this many waiting it fails
    # instead (PostgreSQL keeps the WAL in pg_wal and retries), so a storage outage never fills the disk.
    max_queued: int = Field(default=256, ge=1)


class PointInTimeRecovery(_Model):
    enabled: bool
    window: Duration


class ConfigurationBackups(_Model):
    frequency: Duration
    retention: dict[str, Duration]
    infrastructure_state_files: list[str] = []


class Backups(_Model):
    full: FullBackups
    incremental: IncrementalBackups
    point_in_time_recovery: PointInTimeRecovery
    configuration: ConfigurationBackups
    # How late a scheduled backup may be before dr_backup_validation alarms (its period plus this).
    freshness_grace: Duration = timedelta(hours=2)


class RestoreTest(_Model):
    sample_tables: int = Field(ge=1)
    critical_tables: list[str]
    # How often each storage location must be proven restorable by a restore test (the DR region's every
    # week, the others at least monthly); a location missing here: 7d in the DR region, else 31d.
    locations: dict[str, Duration] = {}
    # How often a whole backup is restored and timed (validation.monthly: full_restore_test): the
    # measurement every sample estimate is held against.
    full_restore_every: Duration = timedelta(days=31)


class Drill(_Model):
    """The monthly drill: a live switchover to the DR standby and back (application outage measured,
    no acknowledged commit lost) as well as the isolated rebuild, when `include_switchover`."""

    include_switchover: bool = False
    # RPO: markers committed continuously this long, the disaster instant at its end; the rebuild uses only what
    # the DR location held at that instant, so the RPO is what such a disaster would have lost (not 0 by design).
    marker_stream: Duration = timedelta(seconds=15)


class PlanReviewPolicy(_Model):
    """When the business impact analysis and recovery objectives were last reviewed, by whom, how often
    they must be, and who answers dr_plan_review (Airflow user ids; empty: anyone with access)."""

    last_reviewed: date | None = None
    reviewed_by: str | None = None
    every: Duration = timedelta(days=365)
    owners: list[str] = []


class Validation(_Model):
    daily: list[str]
    weekly: list[str]
    monthly: list[str]
    deep_verify_sample: int = Field(ge=0)
    restore_test: RestoreTest
    drill: Drill = Drill()


class HealthMonitor(_Model):
    weights: dict[Literal["database", "application", "network", "storage"], int]
    disaster_threshold: int = Field(ge=1)
    max_lag_bytes: ByteSize
    max_spool_files: int = Field(ge=1)
    auto_failover: bool = False
    consecutive_failures: int = Field(ge=1)
    required_settings: dict[str, str]
    min_wal_senders: int = Field(ge=1)
    # The probe rounds of the triggerer (database, network, storage, application): the requirements' 30 s.
    probe_interval: Duration = timedelta(seconds=30)
    # Once a round sees a disaster, the rounds that confirm it come this often (Patroni's loop_wait is 10 s):
    # a lost primary is confirmed in probe_interval + (consecutive_failures - 1) × confirm_interval at most.
    confirm_interval: Duration = timedelta(seconds=10)
    max_latency: Duration = timedelta(seconds=1)  # a node's round trip from the monitor, over it: network failing
    # One commit through the entry point, over it: the writes wait on synchronous standbys that do not answer
    # (or a saturated primary). The commit is cut short at this limit, so the check never hangs on a frozen one.
    max_commit_latency: Duration = timedelta(seconds=2)
    # A standby that stops consuming its replication slot makes the primary keep every WAL segment since: with
    # no bound, until its disk is full and every write stops. The primaries run with max_slot_wal_keep_size set
    # to this (the sandbox, the compose file; drift is a failing check); past it PostgreSQL drops that
    # standby's WAL (the standby must be cloned again) rather than the primary. An incident at
    # `slot_wal_alert_severity` is opened once a slot retains `slot_wal_alert_ratio` of it: time to act first.
    max_slot_wal_keep: ByteSize = 8 * 2**30
    # Every failing check opens an incident of this severity for its component (one per check, joined while it
    # stays red; a disaster's own critical incident stands for all of them), resolved once the check has been
    # green for `resolve_after` (a check that flaps within it stays one incident). "low" reaches the internal
    # teams only; from "medium" the customers group is asked to approve a notice too (stakeholder_groups).
    alerts: dict[Literal["database", "application", "network", "storage", "archiving", "configuration"], Severity] = {
        "database": "critical", "application": "high", "network": "low", "storage": "low", "archiving": "low",
        "configuration": "low"}
    resolve_after: Duration = timedelta(minutes=10)
    slot_wal_alert_ratio: float = Field(default=0.5, gt=0, lt=1)
    slot_wal_alert_severity: Severity = "high"

    @model_validator(mode="after")
    def _confirm_within_interval(self) -> HealthMonitor:
        if self.confirm_interval > self.probe_interval:
            raise ValueError(f"confirm_interval ({format_duration(self.confirm_interval)}) must not be longer than "
                             f"probe_interval ({format_duration(self.probe_interval)}): confirming rounds come sooner")
        if self.max_slot_wal_keep % 2**20 or self.max_slot_wal_keep < 32 * 2**20:
            raise ValueError(f"max_slot_wal_keep ({self.max_slot_wal_keep} bytes) must be a whole number of MiB and at "
                             f"least 32MiB (two WAL segments): it becomes PostgreSQL's max_slot_wal_keep_size, in MB")
        return self

    @property
    def max_slot_wal_keep_setting(self) -> str:
        """max_slot_wal_keep_size as pg_settings shows it (in MB)."""
        return str(self.max_slot_wal_keep // 2**20)


class FailoverApproval(_Model):
    """A second person approves a manual switchover or failover after preflight, before anything changes (a
    dr_operator other than the one who triggered it). On unless turned off: the sandbox turns it off."""

    required: bool = True
    timeout: Duration = timedelta(minutes=15)  # no answer by then: the run stops, nothing changed


class PrimaryGuard(_Model):
    """The guard beside each region's nodes (`continuity guard run`, continuity.failover.guard): a primary that
    was deposed by a failover, or that cannot tell for `ttl`, stops. A failover that could not reach the old
    primary waits `ttl` + `poll` (and a margin) after deposing it, before promoting anything."""

    ttl: Duration = timedelta(seconds=30)
    poll: Duration = timedelta(seconds=3)

    @model_validator(mode="after")
    def _polls_within_ttl(self) -> PrimaryGuard:
        if self.poll.total_seconds() <= 0 or self.poll * 3 > self.ttl:
            raise ValueError(f"failover.primary_guard: poll ({self.poll}) must be positive and at most a third of "
                             f"ttl ({self.ttl}), so a guard that misses one poll still decides within ttl")
        return self


class Failover(_Model):
    """dr_failover's limits (section 3.2: 60 s for a standby to catch up, 16 MB of lag)."""

    catch_up_timeout: Duration = timedelta(seconds=60)
    pause_timeout: Duration = timedelta(seconds=10)
    # A step (preflight, cut-over, application, rejoin, validate, rollback, record) running longer fails as any
    # failure does: rollback and record still run. (A whole-run timeout would skip them, leaving PgBouncer
    # paused and no audit.)
    step_timeout: Duration = timedelta(minutes=10)
    # The cluster lease (continuity.failover.lease) a topology-changing run holds: renewed by each of its steps,
    # lost this long after a run that died holding it.
    lease_ttl: Duration = timedelta(minutes=30)
    approval: FailoverApproval = FailoverApproval()
    # None: no guard runs beside the nodes, so a partitioned old primary is fenced only by the entry point
    # (clients beside it that bypass the entry point could still write to it; the audit says so).
    primary_guard: PrimaryGuard | None = None


Transaction = Literal["login", "upload", "process", "annotate", "list_projects", "report"]


class ApplicationRegion(_Model):
    """The application tier in one region: `serving` runs now; `standby` is started by a failover."""

    state: Literal["serving", "standby"]
    web_instances: int = Field(ge=1)
    workers: int = Field(ge=0)
    conn_id: str  # an http connection: the region's base URL (a load balancer; extra `instances`: each one)
    video_bucket: str
    redis_conn_id: str


class ApplicationFunction(_Model):
    """How a business function is proven in a region: the services it needs and its synthetic transaction."""

    services: list[Literal["web", "worker", "redis", "storage", "database"]] = Field(min_length=1)
    transaction: Transaction


class SshServiceCommands(_Model):
    """One region's application services driven over SSH: shell command lines run on the region's application
    host as the connection's user (e.g. `sudo systemctl start app.target`). Nothing secret goes on them: a
    verification instance's database DSN reaches `verify_start` on stdin."""

    ssh_conn_id: str
    start: str
    stop: str
    status: str  # prints one line per service instance, `<name> running` (any other word: not running)
    promote_cache: str
    follow_cache: str  # may name {upstream_host} and {upstream_port}: the upstream region's Redis
    # A read-only instance on a restored database, for restore tests and drills: prints its URL; stopped by
    # `verify_stop` with {url}. Without them, restore tests cannot run the application's transactions.
    verify_start: str | None = None
    verify_stop: str | None = None


class Application(_Model):
    # How application services are started and stopped per region (`sandbox`: local processes; `ssh`: the
    # commands of `ssh` below on each region's host; absent: a failover to another region stops in preflight).
    service_control: Literal["sandbox", "ssh"] | None = None
    ssh: dict[str, SshServiceCommands] = {}
    regions: dict[str, ApplicationRegion]
    functions: dict[Name, ApplicationFunction]
    probe_conn_id: str  # login = the probe user's e-mail, password = its password (a user of the app)
    probe_timeout: Duration = timedelta(seconds=10)
    processing_timeout: Duration = timedelta(seconds=30)  # upload → detections written, in a probe round
    # What the read-only transactions read: restore tests put these tables in their sample.
    read_only_tables: list[Name] = ["users", "user_credentials", "projects", "videos", "detections"]

    @model_validator(mode="after")
    def _ssh_for_every_region(self) -> Application:
        if self.service_control == "ssh":
            missing = sorted(set(self.regions) - set(self.ssh))
            if missing:
                raise ValueError(f"service_control is 'ssh' but region(s) {', '.join(missing)} have no commands in "
                                 f"application.ssh (ssh_conn_id, start, stop, status, promote_cache, follow_cache)")
        unknown = sorted(set(self.ssh) - set(self.regions))
        if unknown:
            raise ValueError(f"application.ssh names region(s) {', '.join(unknown)} that application.regions does not have")
        return self

    @property
    def serving_region(self) -> str:
        return next(r for r, spec in self.regions.items() if spec.state == "serving")


class Deployment(_Model):
    """Where the orchestrator runs when it is distributed (`continuity run --distributed`,
    docker-compose.yaml): Airflow's metadata database, scheduler, API server and the failover's tasks
    live in `control_region` (default: the DR region), never in the primary region, so that losing the
    primary region does not take the orchestrator of its failover with it. Each region has a Celery
    worker on its own queue (see `continuity.dag_defaults.region_queue`)."""

    control_region: str | None = None


class Policy(_Model):
    version: Literal[1]
    business_functions: dict[Name, BusinessFunction]
    downtime_cost_usd: dict[str, int] = {}
    tiers: dict[Name, Tier]
    data_categories: dict[Name, DataCategory]
    topology: Topology
    storage: Storage
    backups: Backups
    validation: Validation
    health_monitor: HealthMonitor
    failover: Failover = Failover()
    objects: Objects | None = None
    communication: Communication | None = None
    plan_review: PlanReviewPolicy | None = None
    application: Application | None = None
    deployment: Deployment = Deployment()
    # The services of business functions that live in the PostgreSQL database (restores and drills
    # measure them); any other dependency is reported `not measured` until something measures it.
    database_services: list[str] = ["database"]
    # Every recurring DAG's schedule (cron, UTC) except those another section owns: dr_full_backup
    # (backups.full.schedule) and dr_object_replication (objects.schedule). See `schedule_for`.
    schedules: dict[Name, str] = {}

    def schedule_for(self, dag_id: str) -> str:
        """The one schedule of a recurring DAG (its DAG file reads it; `policy check` validates it)."""
        if dag_id == "dr_full_backup":
            return self.backups.full.schedule
        if dag_id == "dr_object_replication" and self.objects is not None:
            return self.objects.schedule
        try:
            return self.schedules[dag_id]
        except KeyError:
            raise PolicyError(f"schedules.{dag_id}: required key is missing (the DAG's schedule, e.g. "
                              f"'0 5 * * 0')") from None

    @property
    def regions(self) -> list[str]:
        """Every region the policy names (nodes, storage locations), in order of first mention."""
        named = [self.topology.primary_region, self.topology.dr_region, *(n.region for n in self.topology.nodes),
                 *(loc.region for loc in self.storage.locations)]
        return list(dict.fromkeys(named))

    @property
    def control_region(self) -> str:
        """The region of the orchestrator (deployment.control_region, else the DR region)."""
        return self.deployment.control_region or self.topology.dr_region

    def with_primary(self, name: str) -> Policy:
        """This policy with the node roles of the persisted topology (see dr_failover)."""
        if name == self.topology.primary.name:
            return self
        return self.model_copy(update={"topology": self.topology.with_primary(name)})

    def restore_test_periods(self) -> dict[str, timedelta]:
        """How often each storage location must be proven restorable (see RestoreTest.locations)."""
        configured = self.validation.restore_test.locations
        return {loc.name: configured.get(loc.name, timedelta(days=7 if loc.region == self.topology.dr_region else 31))
                for loc in self.storage.locations}

    def functions_depending_on(self, service: str) -> dict[str, BusinessFunction]:
        return {k: f for k, f in self.business_functions.items() if service in f.depends_on}

    def functions_on_the_database(self) -> dict[str, BusinessFunction]:
        """Business functions with at least one dependency the database holds."""
        return {k: f for k, f in self.business_functions.items() if set(f.depends_on) & set(self.database_services)}

    def unmeasured_dependencies(self, function: str) -> list[str]:
        """What a database restore or drill does not measure of a business function."""
        return [d for d in self.business_functions[function].depends_on if d not in self.database_services]
