"""The service control of the policy, with what `ssh` needs from Airflow: each region's application host as
an SSH connection (the SSH provider's hook) and each region's Redis address from its connection."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook

from continuity.failover.servicecontrol import ServiceControl, service_control_for
from continuity.failover.sshcontrol import ParamikoShell, RemoteShell


def get_service_control(policy: Any) -> ServiceControl:
    def shell_for(region: str) -> RemoteShell:
        from airflow.providers.ssh.hooks.ssh import SSHHook

        conn_id = policy.application.ssh[region].ssh_conn_id
        # Connected on first use: a region that is gone fails only the actions on it.
        return ParamikoShell(connect=lambda: SSHHook(ssh_conn_id=conn_id).get_conn(),
                             describe=f"the application host of {region} (SSH connection {conn_id})")

    def cache_address(region: str) -> tuple[str, int]:
        connection = BaseHook.get_connection(policy.application.regions[region].redis_conn_id)
        return connection.host or "localhost", connection.port or 6379

    return service_control_for(policy, shell_for=shell_for, cache_address=cache_address)
