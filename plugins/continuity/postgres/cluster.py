"""Local PostgreSQL clusters from the Debian server binaries: initdb, pg_ctl, pg_basebackup, psql.

Used by the sandbox today and by scratch restore targets later. PostgreSQL refuses to run as
root, so when we are root every server-side command runs as the `postgres` OS user and every
directory the server writes is handed to that user.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from continuity.waiting import poll

log = logging.getLogger(__name__)

SERVICE_USER_WHEN_ROOT = "postgres"


class ClusterError(RuntimeError):
    """A local cluster command failed; the message names the node and quotes the tool's error."""


def _bindir_candidates() -> list[Path]:
    """Where PostgreSQL's binaries may be: $PG_BINDIR, the newest /usr/lib/postgresql/*/bin, pg_config's."""
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    candidates.extend(Path(p) for p in versions)
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out:
            candidates.append(Path(out))
    return candidates


def find_bindir() -> Path:
    """The PostgreSQL server binaries (initdb and postgres side by side)."""
    for candidate in _bindir_candidates():
        if (candidate / "initdb").exists() and (candidate / "postgres").exists():
            return candidate
    raise ClusterError(
        "PostgreSQL server binaries (initdb, postgres) not found in $PG_BINDIR, /usr/lib/postgresql/*/bin "
        "or pg_config --bindir. HINT: install the Debian package 'postgresql' (make run does it as root)."
    )


def find_tool(name: str) -> str:
    """A PostgreSQL client tool (pg_dump, pg_restore, ...) from the same places, then PATH."""
    for candidate in _bindir_candidates():
        if (candidate / name).exists():
            return str(candidate / name)
    found = shutil.which(name)
    if not found:
        raise ClusterError(f"{name} not found in $PG_BINDIR, /usr/lib/postgresql/*/bin, pg_config --bindir or PATH. "
                           f"HINT: install the PostgreSQL client matching the server")
    return found


def find_pgbouncer() -> Path:
    for candidate in (os.environ.get("PGBOUNCER_BIN"), shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise ClusterError("pgbouncer not found on PATH or in /usr/sbin. HINT: install the Debian package 'pgbouncer'.")


# What a PostgreSQL server or client tool may inherit from the process that starts it. Everything
# else (AIRFLOW_CONN_*, keyrings, AWS credentials) stays behind: code that arrives inside a backup
# runs in these processes and must find no secret there.
INHERITED_ENV_KEYS = ("PATH", "LANG", "LANGUAGE", "TZ", "PGTZ", "TMPDIR")


def scrubbed_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The minimal environment for server processes and tools, plus `extra` (e.g. PGPASSWORD)."""
    kept = {key: value for key, value in os.environ.items() if key in INHERITED_ENV_KEYS or key.startswith("LC_")}
    kept.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return {**kept, **(extra or {})}


@dataclass(frozen=True)
class ServiceUser:
    """The OS user the servers run as: `postgres` when we are root, else ourselves."""

    name: str
    uid: int
    gid: int

    @classmethod
    def detect(cls) -> ServiceUser:
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam(SERVICE_USER_WHEN_ROOT)
            except KeyError:
                raise ClusterError(
                    "running as root but there is no 'postgres' OS user to run PostgreSQL as "
                    "(PostgreSQL refuses to run as root). HINT: install the Debian package 'postgresql', which creates it."
                ) from None
        else:
            entry = pwd.getpwuid(os.geteuid())
        return cls(name=entry.pw_name, uid=entry.pw_uid, gid=entry.pw_gid)

    @property
    def is_other(self) -> bool:
        return self.uid != os.geteuid()

    def command(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.name, "--", *argv] if self.is_other else argv

    def make_dir(self, path: Path, mode: int = 0o700) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
        if self.is_other:
            os.chown(path, self.uid, self.gid)
        return path

    def write_file(self, path: Path, text: str, mode: int = 0o600) -> Path:
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        if self.is_other:
            os.chown(tmp, self.uid, self.gid)
        os.replace(tmp, path)
        return path

    def run(
        self,
        argv: list[str],
        *,
        what: str,
        env: dict[str, str] | None = None,
        input_text: str | None = None,
        timeout: float = 120,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a server-side tool as this user; on failure raise ClusterError quoting stderr."""
        full_env = scrubbed_environment(env)
        try:
            result = subprocess.run(
                self.command(argv),
                input=input_text,
                capture_output=True,
                text=True,
                env=full_env,
                timeout=timeout,
                cwd=cwd or "/",
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ClusterError(f"{what}: {Path(argv[0]).name} did not finish within {timeout:.0f}s") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            tail = " | ".join(detail[-3:]) if detail else f"exit code {result.returncode}"
            raise ClusterError(f"{what}: {Path(argv[0]).name} failed: {tail}")
        return result


def free_port() -> int:
    """A free loopback port below the kernel's ephemeral range.

    Ports from the ephemeral range (what bind(0) hands out) are also the local ports of outgoing
    connections, so a server restarted later on such a port can find it taken by some client.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    if low > 12000:
        for _ in range(200):
            port = rng.randrange(10000, low)
            if port_is_free(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like the servers themselves: a port whose old connections sit in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); it is not running.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def stop_pid(pid: int | None, *, name: str, sig: int = signal.SIGTERM, timeout: float = 15) -> bool:
    """Signal a recorded process and wait for it; SIGKILL after the timeout. True if it was running."""
    if not pid_alive(pid):
        return False
    assert pid is not None
    os.kill(pid, sig)
    if poll(lambda: not pid_alive(pid), timeout=timeout, interval=0.1):
        return True
    log.warning("%s (pid %s) ignored signal %s for %.0fs; killing it", name, pid, sig, timeout)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def wait_for_port(port: int, *, what: str, timeout: float = 30) -> None:
    def listening() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    if poll(listening, timeout=timeout, interval=0.1):
        return
    raise ClusterError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f}s")


class LocalCluster:
    """One PostgreSQL data directory on this machine, driven with pg_ctl as the service user."""

    def __init__(self, *, name: str, data_dir: Path, port: int, socket_dir: Path, log_file: Path,
                 user: ServiceUser, bindir: Path) -> None:
        self.name = name
        self.data_dir = data_dir
        self.port = port
        self.socket_dir = socket_dir
        self.log_file = log_file
        self.user = user
        self.bindir = bindir

    def tool(self, name: str) -> str:
        return str(self.bindir / name)

    @property
    def exists(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def postmaster_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
        except (OSError, IndexError):
            return None
        return int(first) if first.strip().isdigit() else None

    @property
    def running(self) -> bool:
        return pid_alive(self.postmaster_pid())

    def initdb(self, *, superuser: str = "postgres") -> None:
        self.user.make_dir(self.data_dir)
        self.user.run(
            [self.tool("initdb"), "-D", str(self.data_dir), "-U", superuser, "--data-checksums",
             "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8"],
            what=f"initdb of node {self.name}",
        )

    def write_node_conf(self, settings: dict[str, str | int]) -> None:
        """Node-specific settings (port, socket): in node.conf, which a base backup copy must not inherit."""
        lines = [f"{key} = {conf_value(value)}" for key, value in settings.items()]
        self.user.write_file(self.data_dir / "node.conf", "\n".join(lines) + "\n")

    def start(self, *, timeout: int = 60) -> None:
        if self.running:
            log.info("node %s is already running (pid %s)", self.name, self.postmaster_pid())
            return
        self.user.run(
            [self.tool("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", str(timeout), "start"],
            what=f"start of node {self.name} (log: {self.log_file})",
            timeout=timeout + 10,
        )

    def stop(self, *, mode: str = "fast", timeout: int = 60) -> bool:
        """Stop the server if it runs. True if it was running."""
        pid = self.postmaster_pid()
        if not pid_alive(pid):
            return False
        try:
            self.user.run(
                [self.tool("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "-t", str(timeout), "stop"],
                what=f"stop of node {self.name}",
                timeout=timeout + 10,
            )
        except ClusterError as exc:
            log.warning("%s; signalling pid %s directly", exc, pid)
            stop_pid(pid, name=f"postgres {self.name}", sig=signal.SIGINT)
        return True

    def kill(self) -> None:
        """Simulate a crash of the server: SIGKILL the postmaster and every backend at once.

        (Killing only the postmaster leaves backends attached to shared memory, and a restart
        then refuses to run until they exit.)
        """
        pid = self.postmaster_pid()
        if not pid_alive(pid):
            return
        assert pid is not None
        victims = [pid, *_children(pid)]

        def kill_all(pids: list[int]) -> None:
            for victim in pids:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass

        def gone() -> bool:
            # A backend forked while the list was taken escapes it (it is re-parented once the postmaster
            # dies) and keeps the shared memory attached: every server process runs in the data directory.
            stragglers = [p for p in _processes_in(self.data_dir) if p not in victims]
            victims.extend(stragglers)
            kill_all(stragglers)
            return not any(pid_alive(v) for v in victims)

        kill_all(victims)
        if poll(gone, timeout=10, interval=0.05):
            # As after a machine restart: the dead postmaster may linger as an unreaped zombie, whose pid
            # would make the next start refuse; its lock file is stale now that every process is gone.
            (self.data_dir / "postmaster.pid").unlink(missing_ok=True)
            for stale in (f".s.PGSQL.{self.port}.lock", f".s.PGSQL.{self.port}"):
                (self.socket_dir / stale).unlink(missing_ok=True)

    def psql(self, sql: str, *, dbname: str = "postgres", superuser: str = "postgres") -> str:
        """Run SQL through the local socket as the superuser; SQL goes on stdin, never argv."""
        result = self.user.run(
            [self.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir),
             "-p", str(self.port), "-U", superuser, "-d", dbname, "-At", "-f", "-"],
            what=f"SQL on node {self.name}",
            input_text=sql,
        )
        return result.stdout

    def base_backup_from(self, *, source_port: int, user: str, password: str, slot: str, timeout: int = 600) -> None:
        """Clone a running primary into this (empty) data directory and create its replication slot."""
        self.user.make_dir(self.data_dir)
        self.user.run(
            [self.tool("pg_basebackup"), "-D", str(self.data_dir), "-h", "127.0.0.1", "-p", str(source_port),
             "-U", user, "-X", "stream", "-C", "-S", slot, "--checkpoint=fast", "--no-password"],
            what=f"base backup for node {self.name}",
            env={"PGPASSWORD": password, "PGAPPNAME": f"continuity-clone-{self.name}"},
            timeout=timeout,
        )


def _processes_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory` (a PostgreSQL server's processes: its data directory)."""
    wanted = str(directory.resolve())
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if os.readlink(proc / "cwd") == wanted:
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def conf_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def write_private(path: Path, text: str) -> None:
    """`text` into `path` (parents made), a fresh file created 0600 before anything is written into it (it
    holds secrets: a stale temporary file of another mode is never reused) and renamed over the old one: a
    reader, or a crash, never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
