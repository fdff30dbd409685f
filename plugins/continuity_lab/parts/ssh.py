"""An SSH server on loopback: the nodes' and the application's hosts as production node and service control see them (one part of `continuity_lab.sandbox.Sandbox`)."""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from continuity.postgres.cluster import free_port, port_is_free, stop_pid, wait_for_port
from continuity.policy.model import NodeHost, Policy
from continuity.policy.project import PROJECT_ENV_VAR, policy_path, project_dir
from continuity_lab.processes import APP_HOST_USER, SSH_CONN_ID, app_ssh_conn_id, find_sshd, is_our_process

log = logging.getLogger(__name__)


class SshPart:
    """An SSH server on loopback: the nodes' and the application's hosts as production node and service control see them."""

    # -- SSH: the nodes' hosts as a production node control sees them -------------------------
    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    def start_ssh(self, started: list[str] | None = None) -> int:
        """An OpenSSH server on loopback through which node control reaches the nodes as their OS user:
        its own host key, one client key authorized for that user only, and a password file the user
        owns for replication and pg_rewind. Returns its port."""
        sshd = find_sshd()
        entry = self.state.setdefault("ssh", {"port": free_port(), "pid": None})
        if is_our_process(entry.get("pid"), str(self.ssh_dir / "sshd_config")):
            return entry["port"]
        if not port_is_free(entry["port"]):
            entry["port"] = free_port()
        # Every path sshd reads as the node's OS user (the authorized keys) must be traversable by it.
        self.ssh_dir.mkdir(mode=0o755, exist_ok=True)
        self.ssh_dir.chmod(0o755)
        for key in ("host_ed25519", "client_ed25519"):
            if not (self.ssh_dir / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"continuity-sandbox-{key}",
                                "-f", str(self.ssh_dir / key)], check=True, capture_output=True)
        authorized = self.ssh_dir / "authorized_keys"
        authorized.write_text((self.ssh_dir / "client_ed25519.pub").read_text())
        authorized.chmod(0o644)
        pgpass = "".join(f"127.0.0.1:*:*:{role}:{self.password(role)}\n" for role in ("replicator", "continuity_admin"))
        self.user.write_file(self.ssh_dir / "pgpass", pgpass)
        config = self.ssh_dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {entry['port']}", "ListenAddress 127.0.0.1", f"HostKey {self.ssh_dir / 'host_ed25519'}",
            f"PidFile {self.ssh_dir / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
            # The nodes' OS user for node control; the sandbox's own user is the regions' "application host"
            # for service control over SSH (it owns the application's processes and this state).
            f"AllowUsers {self.user.name} {APP_HOST_USER}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            # PAM's account stage instead of sshd's own check: Debian's postgres account has a locked
            # password ("!"), which sshd alone refuses even for a key.
            "UsePAM yes", "StrictModes no",
            f"PermitRootLogin {'prohibit-password' if APP_HOST_USER == 'root' else 'no'}",
            "X11Forwarding no", "AllowTcpForwarding no",
            "LogLevel INFO", ""]))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / "sshd.log").open("ab") as log_file:
            process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=log_file,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        entry["pid"] = process.pid
        if started is not None:
            started.append("sshd")
        self._save_state()
        wait_for_port(entry["port"], what="the sandbox's SSH server")
        self.write_connections()
        return entry["port"]

    def stop_ssh(self) -> bool:
        pid = self.state.get("ssh", {}).get("pid")
        if is_our_process(pid, str(self.ssh_dir / "sshd_config")):
            stop_pid(pid, name="sshd", sig=signal.SIGTERM)
            return True
        return False

    def ssh_policy(self) -> Policy:
        """This sandbox's policy with node control over SSH: every node's host as its data directory,
        binaries, port and socket say (the SSH server must be running)."""
        topology = self.policy.topology
        nodes = []
        for node in topology.nodes:
            cluster = self.cluster(node.name)
            host = NodeHost(
                ssh_conn_id=SSH_CONN_ID.format(node=node.name), data_directory=str(cluster.data_dir),
                bin_directory=str(Path(cluster.tool("pg_ctl")).parent), address="127.0.0.1", port=cluster.port,
                socket_directory=str(self.socket_dir), settings_file="node.conf", passfile=str(self.ssh_dir / "pgpass"),
                log_file=str(cluster.log_file),
                restore_command=f"{self._fetch_script()} {self.wal_fetch_socket} %f %p")
            nodes.append(node.model_copy(update={"host": host}))
        return self.policy.model_copy(update={"topology": topology.model_copy(
            update={"nodes": nodes, "node_control": "ssh"})})

    def write_ssh_policy(self) -> Path:
        """`ssh_policy()` as a policy file (`$CONTINUITY_POLICY` for Airflow to fail over over SSH), with the
        application's service control over SSH too (`ssh_service_commands`)."""
        path = self.root / "policy-ssh.yaml"
        data = yaml.safe_load(policy_path().read_text())
        topology = self.ssh_policy().topology
        data["topology"]["node_control"] = "ssh"
        hosts = {node.name: node.host.model_dump(exclude_none=True) for node in topology.nodes}
        for node in data["topology"]["nodes"]:
            node["host"] = hosts[node["name"]]
        if data.get("application"):
            data["application"]["service_control"] = "ssh"
            data["application"]["ssh"] = {region: self.ssh_service_commands(region)
                                          for region in data["application"]["regions"]}
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def ssh_service_commands(self, region: str) -> dict[str, str]:
        """What a region's application host runs for each service-control action: here `continuity sandbox app`
        on this machine, logged in over the sandbox's SSH server as the user who owns the sandbox."""
        app = (f"{PROJECT_ENV_VAR}={shlex.quote(str(project_dir()))} {shlex.quote(sys.executable)} -m continuity.cli "
               f"sandbox app --root {shlex.quote(str(self.root))}")
        return {"ssh_conn_id": app_ssh_conn_id(region),
                "start": f"{app} start {region}", "stop": f"{app} stop {region}", "status": f"{app} status {region}",
                "promote_cache": f"{app} promote-cache {region}",
                "follow_cache": f"{app} follow-cache {region} --upstream-port {{upstream_port}}",
                "verify_start": f"{app} verify-start {region}", "verify_stop": f"{app} verify-stop {region} --url {{url}}"}
