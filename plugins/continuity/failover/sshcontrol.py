"""Node control over SSH: the failover's host-level actions run on each node's own host.

Every command runs as the OS user the SSH connection logs in as (the PostgreSQL OS user) with the
policy's data directory and binaries (`topology.nodes[].host`). Nothing secret crosses the channel:
replication and pg_rewind authenticate from the node's own password file (`host.passfile`, or
libpq's default `~/.pgpass`), and the settings Continuity manages are written through stdin, never
on a command line. The transport is anything with `run()`; `ParamikoShell` wraps a paramiko client
(the SSH provider's hook gives one from an Airflow connection).
"""

from __future__ import annotations

import logging
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from psycopg.conninfo import make_conninfo

from continuity.policy.model import synchronous_standby_names
from continuity.postgres.cluster import conf_value
from continuity.failover.nodecontrol import NodeControlError, latest_checkpoint_location, slot_statements
from continuity.failover.servicecontrol import ServiceControlError

log = logging.getLogger(__name__)

# Settings a failover rewrites in the node's settings file; every other line is left as it was.
MANAGED_SETTINGS = ("synchronous_standby_names", "primary_conninfo", "primary_slot_name", "restore_command")
PG_CTL_NOT_RUNNING = 3


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: str
    stderr: str

    def last_line(self) -> str:
        lines = [line for line in (self.stdout + self.stderr).splitlines() if line.strip()]
        return lines[-1] if lines else f"exit status {self.exit_status}"


class RemoteShell(Protocol):
    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120) -> CommandResult: ...


class ParamikoShell:
    """Commands over one SSH connection, opened on first use and again when it dropped.

    :param connect: returns a connected `paramiko.SSHClient` (e.g. `SSHHook(ssh_conn_id=...).get_conn`).
    :param describe: what the connection is, for errors (`node primary over SSH connection x`).
    """

    def __init__(self, *, connect: Callable[[], Any], describe: str) -> None:
        self._connect = connect
        self.describe = describe
        self._client: Any = None

    def _session(self) -> Any:
        transport = self._client.get_transport() if self._client is not None else None
        if transport is None or not transport.is_active():
            try:
                self._client = self._connect()
            except Exception as exc:
                raise NodeControlError(f"{self.describe}: cannot connect: {exc}") from exc
        return self._client

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 120) -> CommandResult:
        client = self._session()
        try:
            channel = client.get_transport().open_session(timeout=timeout)
            channel.settimeout(timeout)
            channel.exec_command(shlex.join(argv))
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = channel.makefile("rb"), channel.makefile_stderr("rb")
            # The commands print little (pg_rewind's progress is the most): reading stdout first cannot
            # fill stderr's window before the command ends.
            stdout, stderr = out.read(), err.read()
            status = channel.recv_exit_status()
            channel.close()
        except NodeControlError:
            raise
        except Exception as exc:  # paramiko's SSHException, socket.timeout, EOFError: the host or link failed
            self._client = None
            raise NodeControlError(f"{self.describe}: {argv[0]} did not complete: {exc or type(exc).__name__}") \
                from exc
        return CommandResult(status, stdout.decode(errors="replace"), stderr.decode(errors="replace"))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RemoteShells:
    """Remote shells opened on first use, one per key (a node, a region), closed together: a host that is
    gone fails only the actions on it."""

    def __init__(self, shell_for: Callable[[str], RemoteShell]) -> None:
        self._shell_for = shell_for
        self._open: dict[str, RemoteShell] = {}

    def get(self, key: str) -> RemoteShell:
        if key not in self._open:
            self._open[key] = self._shell_for(key)
        return self._open[key]

    def close(self) -> None:
        while self._open:
            _, shell = self._open.popitem()
            close = getattr(shell, "close", None)
            if close is not None:
                close()


def rewrite_settings(text: str, settings: Mapping[str, str | None]) -> str:
    """`text` (a settings file) with each key of `settings` set to its value, or removed when None."""
    pattern = re.compile(r"^\s*(" + "|".join(map(re.escape, settings)) + r")\s*(=|\s)", re.I)
    kept = [line for line in text.splitlines() if not pattern.match(line)]
    added = [f"{key} = {conf_value(value)}" for key, value in settings.items() if value is not None]
    return "\n".join(kept + added) + "\n"


class SshNodeControl:
    """NodeControl over SSH (`topology.node_control: ssh`).

    :param policy: the policy; each node's `host` says where its PostgreSQL lives on its host.
    :param shell_for: the remote shell of a node by name (opened lazily: a lost host fails only the
        actions on it).
    """

    def __init__(self, *, policy: Any, shell_for: Callable[[str], RemoteShell]) -> None:
        self.policy = policy
        self._shells = RemoteShells(shell_for)

    @classmethod
    def from_policy(cls, policy: Any, *, shell_for: Callable[[str], RemoteShell] | None = None,
                    **_unused: Any) -> SshNodeControl:
        """What `node_control_for` calls: `shell_for` comes from the Airflow layer's SSH connections."""
        if shell_for is None:
            raise NodeControlError("topology.node_control is 'ssh' but no SSH connections were given; HINT: run the "
                                   "failover from Airflow (each node's host.ssh_conn_id is an Airflow connection)")
        return cls(policy=policy, shell_for=shell_for)

    def _host(self, name: str) -> Any:
        try:
            node = self.policy.topology.node(name)
        except KeyError as exc:
            raise NodeControlError(str(exc.args[0])) from None
        if node.host is None:
            raise NodeControlError(f"node {name}: topology.nodes[].host is not set (node control over SSH needs "
                                   f"its ssh_conn_id and data_directory)")
        return node.host

    def _run(self, name: str, argv: Sequence[str], *, what: str, stdin: bytes | None = None,
             timeout: float = 120, ok: Sequence[int] = (0,)) -> CommandResult:
        result = self._shells.get(name).run(argv, stdin=stdin, timeout=timeout)
        if result.exit_status not in ok:
            raise NodeControlError(f"{what} of node {name} failed over SSH (exit {result.exit_status}): "
                                   f"{result.last_line()}")
        return result

    def _tool(self, name: str, tool: str) -> str:
        return f"{self._host(name).bin_directory.rstrip('/')}/{tool}"

    def _data(self, name: str, relative: str = "") -> str:
        data = self._host(name).data_directory.rstrip("/")
        return f"{data}/{relative}" if relative else data

    def is_running(self, name: str) -> bool:
        result = self._run(name, [self._tool(name, "pg_ctl"), "status", "-D", self._data(name)],
                           what="pg_ctl status", ok=(0, PG_CTL_NOT_RUNNING))
        return result.exit_status == 0

    def stop(self, name: str, *, mode: str = "fast") -> None:
        if mode not in ("smart", "fast", "immediate"):
            raise NodeControlError(f"stop of node {name}: unknown shutdown mode {mode!r}")
        if self.is_running(name):
            self._run(name, [self._tool(name, "pg_ctl"), "stop", "-D", self._data(name), "-m", mode, "-w", "-t", "60"],
                      what="pg_ctl stop", timeout=90)

    def start(self, name: str) -> None:
        if self.is_running(name):
            return
        host = self._host(name)
        log_file = host.log_file or self._data(name, "pg_ctl.log")
        self._run(name, [self._tool(name, "pg_ctl"), "start", "-D", self._data(name), "-l", log_file, "-w", "-t",
                         "60"], what=f"pg_ctl start (log: {log_file})", timeout=90)

    def checkpoint_lsn(self, name: str) -> str:
        result = self._run(name, [self._tool(name, "pg_controldata"), "-D", self._data(name)], what="pg_controldata")
        return latest_checkpoint_location(result.stdout, node=name)

    def fence(self, name: str) -> None:
        self._run(name, ["touch", self._data(name, "standby.signal")], what="fencing (standby.signal)")

    def unfence(self, name: str) -> None:
        self._run(name, ["rm", "-f", self._data(name, "standby.signal")], what="removing standby.signal")

    def is_fenced(self, name: str) -> bool:
        return self._run(name, ["test", "-e", self._data(name, "standby.signal")], what="looking for standby.signal",
                         ok=(0, 1)).exit_status == 0

    def _settings_path(self, name: str) -> str:
        return self._data(name, self._host(name).settings_file)

    def _read_settings(self, name: str) -> str:
        path = self._settings_path(name)
        return self._run(name, ["sh", "-c", 'if [ -e "$1" ]; then cat "$1"; fi', "sh", path],
                         what=f"reading {path}").stdout

    def _write_settings(self, name: str, text: str) -> None:
        path = self._settings_path(name)
        # Written beside and renamed over: a dropped connection never leaves a half-written settings file,
        # which would keep the server from starting.
        self._run(name, ["sh", "-c", 'umask 077 && cat > "$1.continuity-new" && mv "$1.continuity-new" "$1"', "sh",
                         path], what=f"writing {path}", stdin=text.encode())

    def _rewrite_settings(self, name: str, settings: Mapping[str, str | None]) -> None:
        self._write_settings(name, rewrite_settings(self._read_settings(name), settings))

    def _reload_if_running(self, name: str) -> None:
        if self.is_running(name):
            self._run(name, [self._tool(name, "pg_ctl"), "reload", "-D", self._data(name)], what="pg_ctl reload")

    def make_primary_settings(self, name: str, *, synchronous_standbys: list[str], quorum: int = 1) -> None:
        self._rewrite_settings(name, {"synchronous_standby_names": synchronous_standby_names(synchronous_standbys,
                                                                                             quorum=quorum),
                                      "primary_conninfo": None, "primary_slot_name": None})
        self._reload_if_running(name)

    def source_conninfo(self, source: str, *, user: str, application_name: str, passfile: str | None) -> str:
        """How a node reaches `source` (its address as the other nodes see it); no password in it."""
        upstream = self._host(source)
        parts: dict[str, Any] = {"host": upstream.address, "port": upstream.port, "user": user, "dbname": "postgres",
                                 "application_name": application_name}
        if passfile:
            parts["passfile"] = passfile
        return make_conninfo(**parts)

    def follow(self, name: str, upstream: str) -> None:
        host = self._host(name)
        conninfo = self.source_conninfo(upstream, user=host.replication_user, application_name=name,
                                        passfile=host.passfile)
        settings: dict[str, str | None] = {"primary_conninfo": conninfo, "primary_slot_name": name,
                                           "synchronous_standby_names": None}
        if host.restore_command:
            settings["restore_command"] = host.restore_command
        self._rewrite_settings(name, settings)
        self.fence(name)
        # primary_conninfo is reloadable (PostgreSQL 13+): the WAL receiver restarts on the new upstream.
        self._reload_if_running(name)

    def ensure_slots(self, name: str, slots: list[str]) -> None:
        statements = slot_statements(slots)
        if not statements:
            return
        host = self._host(name)
        self._run(name, [self._tool(name, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", host.socket_directory,
                         "-p", str(host.port), "-d", "postgres"], what="creating replication slots",
                  stdin=statements.encode())

    def rewind(self, name: str, source: str) -> str:
        host = self._host(name)
        conninfo = self.source_conninfo(source, user=host.rewind_user, application_name=f"continuity-rewind-{name}",
                                        passfile=host.passfile)
        # A crashed former primary is first recovered in single-user mode, which refuses standby mode:
        # lift the fence for the rewind (the server is stopped throughout) and put it back after.
        self.unfence(name)
        own_settings = self._read_settings(name)
        try:
            result = self._run(name, [self._tool(name, "pg_rewind"), "--target-pgdata", self._data(name),
                                      "--source-server", conninfo, "--progress"],
                               what=f"pg_rewind from {source}", timeout=900)
        finally:
            try:
                # pg_rewind copies the source's configuration files, this one among them (the source's port,
                # its upstream): the node gets its own back.
                self._write_settings(name, own_settings)
            finally:
                self.fence(name)
        return result.last_line()

    def close(self) -> None:
        self._shells.close()



class SshServiceControl:
    """ServiceControl over SSH (`application.service_control: ssh`): each action runs the region's command
    line from `application.ssh` through `sh -c` on the region's application host.

    :param policy: the policy (its `application.ssh` commands).
    :param shell_for: the remote shell of a region's application host (opened lazily).
    :param cache_address: host and port of a region's Redis, for `follow_cache`'s placeholders.
    """

    def __init__(self, *, policy: Any, shell_for: Callable[[str], RemoteShell],
                 cache_address: Callable[[str], tuple[str, int]]) -> None:
        self.policy = policy
        self._cache_address = cache_address
        self._shells = RemoteShells(shell_for)

    @classmethod
    def from_policy(cls, policy: Any, *, shell_for: Callable[[str], RemoteShell] | None = None,
                    cache_address: Callable[[str], tuple[str, int]] | None = None, **_unused: Any) -> SshServiceControl:
        """What `service_control_for` calls: both collaborators come from the Airflow layer's connections."""
        if shell_for is None or cache_address is None:
            raise ServiceControlError("application.service_control is 'ssh' but no SSH connections were given; HINT: "
                                      "run it from Airflow (each region's application.ssh ssh_conn_id is a connection)")
        return cls(policy=policy, shell_for=shell_for, cache_address=cache_address)

    def _commands(self, region: str) -> Any:
        commands = self.policy.application.ssh.get(region)
        if commands is None:
            raise ServiceControlError(f"region {region}: no commands in application.ssh (service control over SSH "
                                      f"needs the region's ssh_conn_id and a command per action)")
        return commands

    def _run(self, region: str, action: str, command: str | None, *, stdin: bytes | None = None,
             timeout: float = 300) -> CommandResult:
        if not command:
            raise ServiceControlError(f"region {region}: application.ssh.{region}.{action} is not set")
        conn_id = self._commands(region).ssh_conn_id
        try:
            result = self._shells.get(region).run(["sh", "-c", command], stdin=stdin, timeout=timeout)
        except NodeControlError as exc:  # the transport's failure (cannot connect, link lost)
            raise ServiceControlError(f"{action} of region {region} over SSH ({conn_id}): {exc}") from exc
        if result.exit_status != 0:
            raise ServiceControlError(f"{action} of region {region} failed over SSH ({conn_id}, exit "
                                      f"{result.exit_status}): {result.last_line()}")
        log.info("%s of region %s over SSH: %s", action, region, result.last_line())
        return result

    @staticmethod
    def _lines(result: CommandResult) -> list[str]:
        return [line.strip() for line in result.stdout.splitlines() if line.strip()]

    def start_region(self, region: str) -> list[str]:
        return self._lines(self._run(region, "start", self._commands(region).start)) or [f"{region}: started"]

    def stop_region(self, region: str) -> list[str]:
        return self._lines(self._run(region, "stop", self._commands(region).stop)) or [f"{region}: stopped"]

    def running(self, region: str) -> dict[str, bool]:
        services: dict[str, bool] = {}
        for line in self._lines(self._run(region, "status", self._commands(region).status)):
            name, _, state = line.rpartition(" ")
            services[name or state] = state == "running"
        return services

    def promote_cache(self, region: str) -> str:
        return self._run(region, "promote_cache", self._commands(region).promote_cache).last_line()

    def follow_cache(self, region: str, upstream_region: str) -> str:
        host, port = self._cache_address(upstream_region)
        command = self._commands(region).follow_cache.format(upstream_host=shlex.quote(host), upstream_port=int(port))
        self._run(region, "follow_cache", command)
        return f"Redis in {region} replicates from {upstream_region}'s ({host}:{port})"

    def start_verification_instance(self, region: str, *, dsn: str) -> str:
        result = self._run(region, "verify_start", self._commands(region).verify_start, stdin=dsn.encode())
        url = result.stdout.strip().splitlines()[-1:] or [""]
        if not url[0].startswith(("http://", "https://")):
            raise ServiceControlError(f"verify_start of region {region} printed no URL as its last line "
                                      f"(got {result.last_line()!r})")
        return url[0]

    def stop_verification_instance(self, url: str) -> None:
        region = next((r for r, c in self.policy.application.ssh.items() if c.verify_stop), None)
        if region is not None:
            self._run(region, "verify_stop", self._commands(region).verify_stop.format(url=shlex.quote(url)))

    def isolate_region(self, region: str) -> list[str]:
        raise ServiceControlError(f"losing region {region} is not done over SSH: cut it off by the network's own "
                                  f"means (security groups, a fault injection experiment) for the exercise")

    def reconnect_region(self, region: str) -> list[str]:
        raise ServiceControlError(f"region {region} is reconnected by the means that cut it off, not over SSH")

    def close(self) -> None:
        self._shells.close()
