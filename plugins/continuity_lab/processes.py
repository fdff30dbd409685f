"""The lab's processes on this host: finding the Debian binaries, starting Redis, PgBouncer's settings, telling
a recorded pid is still ours, and the names the sandbox's SSH logins and WAL pusher go by."""

from __future__ import annotations

import getpass
import io
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from continuity.policy.project import include_dir
from continuity.postgres.cluster import pid_alive

APP_DATABASE = "app"


class SandboxError(RuntimeError):
    """The sandbox cannot do what was asked; the message says what and where, with a HINT."""

class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (for upload_fileobj without the whole object in memory)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks, self._pending, self._offset = chunks, memoryview(b""), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self._offset >= len(self._pending):
            try:
                self._pending, self._offset = memoryview(next(self._chunks)), 0
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending) - self._offset)
        buffer[:n] = self._pending[self._offset:self._offset + n]
        self._offset += n
        return n


def pgbouncer_ini(*, port: int, primary_port: int, directory: Path, log_file: Path) -> str:
    return f"""\
; Continuity sandbox: the application's single entry point, in front of the current primary.
[databases]
{APP_DATABASE} = host=127.0.0.1 port={primary_port} dbname={APP_DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {directory / 'userlist.txt'}
admin_users = continuity_admin
stats_users = continuity_admin
; Transaction pooling: a switchover's PAUSE completes once in-flight transactions finish, while
; clients stay connected and their next transaction goes to the new primary.
pool_mode = transaction
max_client_conn = 200
default_pool_size = 20
server_connect_timeout = 5
; After a primary restart or failover, retry the server login quickly instead of the default 15 s.
server_login_retry = 1
; A client waiting for a server gets an error after 10 s instead of the default 120 s, so health
; checks and applications see an outage instead of hanging through it. A switchover PAUSE must
; finish within this.
query_wait_timeout = 10
pidfile = {directory / 'pgbouncer.pid'}
logfile = {log_file}
ignore_startup_parameters = extra_float_digits,options
"""


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def find_binary(name: str, *, debian_path: str, needed_for: str, package: str, installed_by: str) -> str:
    """On PATH, else where the Debian package puts it (sbin is not on every PATH), else a SandboxError with a HINT."""
    binary = shutil.which(name) or (debian_path if Path(debian_path).exists() else None)
    if binary is None:
        raise SandboxError(f"{name} is not installed ({needed_for}); HINT: `{installed_by}` installs the Debian "
                           f"package {package}, or: apt-get install {package}")
    return binary


def start_redis_server(*, directory: Path, port: int, password: str, log_file: Path, extra: list[str]) -> int:
    """A Redis server (Debian's redis-server) on loopback `port` keeping its data in `directory`; its pid."""
    directory.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"port {port}", "bind 127.0.0.1", f"dir {directory}", "appendonly yes", "daemonize no",
             f"logfile {log_file}", f"requirepass {password}", *extra]
    config = directory / "redis.conf"
    # The password is in this file (mode 0600 before it is written), never on a command line.
    config.touch(mode=0o600)
    config.chmod(0o600)
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen([find_redis_server(), str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, start_new_session=True,
                               cwd=directory)
    return process.pid


def find_redis_server() -> str:
    return find_binary("redis-server", debian_path="/usr/bin/redis-server", package="redis-server",
                        needed_for="the application's cache and sessions need it", installed_by="make run")


def find_sshd() -> str:
    return find_binary("sshd", debian_path="/usr/sbin/sshd", package="openssh-server",
                        needed_for="node control over SSH needs an SSH server", installed_by="make test")


SSH_CONN_ID = "continuity_ssh_{node}"


def app_ssh_conn_id(region: str) -> str:
    """The SSH connection of a region's application host (an environment variable name cannot hold '-')."""
    return f"continuity_ssh_app_{region.replace('-', '_')}"


APP_HOST_USER = getpass.getuser()
WAL_PUSHER_NEEDLE = "wal pusher --root"
GUARD_NEEDLE = "guard run --root"


def is_our_process(pid: int | None, needle: str) -> bool:
    """Only signal a recorded pid if it still is the program we started (pids get reused)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return needle in cmdline


def listening_sampleapps(port: int) -> list[int]:
    """The sample application processes listening on `port` on loopback."""
    import psutil

    pids = {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid}
    return sorted(pid for pid in pids if "continuity_lab.sampleapp" in " ".join(psutil.Process(pid).cmdline()))


def sampleapps_using(endpoints: set[str]) -> list[int]:
    """Sample application processes configured with one of `endpoints` as their S3 endpoint (a region gateway of
    one sandbox), whoever started them: the recorded instances, and those no state file knows (a verification
    instance whose task was killed, an instance started over SSH by another process)."""
    import psutil

    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if "continuity_lab.sampleapp" not in " ".join(process.info["cmdline"] or []):
                continue
            if process.environ().get("CONTINUITY_APP_S3_ENDPOINT") in endpoints:
                found.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return sorted(found)


ROLES = ("replicator", "continuity_backup", "continuity_admin", "app")
S3_ACCESS_KEY = "continuity-sandbox"

# Settings every node shares (copied into standbys by the base backup); node.conf holds the rest.
SHARED_SETTINGS: dict[str, str | int] = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "replica",
    "max_wal_senders": 10,
    "max_replication_slots": 10,
    "wal_keep_size": "128MB",
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",
    "archive_mode": "on",
    "max_connections": 60,
    "shared_buffers": "64MB",
    "password_encryption": "scram-sha-256",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_replication_commands": "on",
}

PG_HBA = """\
# Continuity sandbox. The local socket lives in a directory only the service user can enter.
local   all          all                      trust
host    replication  replicator         127.0.0.1/32  scram-sha-256
host    replication  continuity_backup  127.0.0.1/32  scram-sha-256
host    all          all                127.0.0.1/32  scram-sha-256
"""


def archive_script_source() -> Path:
    """The archive_command script the sandbox installs (include/scripts/archive-wal.sh)."""
    return include_dir() / "scripts" / "archive-wal.sh"


def fetch_script_source() -> Path:
    """The standbys' restore_command script (include/scripts/fetch-wal.sh)."""
    return include_dir() / "scripts" / "fetch-wal.sh"
