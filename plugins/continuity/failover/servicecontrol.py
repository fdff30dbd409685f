"""Starting and stopping the application tier of a region: what a failover needs beyond the database.

The requirements' DR procedure starts the DR application services and makes the DR Redis the
primary before it moves DNS. `ServiceControl` is that contract; the policy names the implementation
(`application.service_control`) and `service_control_for()` builds it: `sandbox` runs the sample
application's processes on this host; `ssh` runs the policy's command per action on each region's
application host (`continuity.failover.sshcontrol.SshServiceControl`). Found by name (`continuity.policy.registry`): the
product never imports the lab.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class ServiceControlError(RuntimeError):
    """Starting or stopping an application service failed; the message names the region and the service."""


class ServiceControl(Protocol):
    def start_region(self, region: str) -> list[str]:
        """Start every application service of `region` (web instances, workers); returns what was started."""
        ...

    def stop_region(self, region: str) -> list[str]:
        """Stop them; returns what was stopped. Stopping a stopped region is not an error."""
        ...

    def running(self, region: str) -> dict[str, bool]:
        """Each service instance of `region` and whether it runs."""
        ...

    def promote_cache(self, region: str) -> str:
        """Make the region's Redis a primary (it stops replicating); returns what was done."""
        ...

    def follow_cache(self, region: str, upstream_region: str) -> str:
        """Make the region's Redis replicate from `upstream_region`'s; returns what was done."""
        ...

    def start_verification_instance(self, region: str, *, dsn: str) -> str:
        """A read-only application instance of `region` (its object bucket) on the database `dsn` (a restored
        copy): returns its URL. Restore tests and drills run the read-only synthetic transactions on it."""
        ...

    def stop_verification_instance(self, url: str) -> None: ...

    # The quarterly region-loss exercise (dr_region_recovery). A production implementation may refuse
    # (ServiceControlError): there the exercise cuts a region off by its own means (network ACLs, an
    # AWS Fault Injection Service experiment) and these say how.
    def isolate_region(self, region: str) -> list[str]:
        """Lose `region` for real: every process of it stopped without a clean handover (application,
        Redis, PostgreSQL nodes) and its object storage unreachable; returns what was lost."""
        ...

    def reconnect_region(self, region: str) -> list[str]:
        """The lost region is back: its storage reachable and its Redis a replica of the serving region's.
        Its database nodes stay down until they are rebuilt as standbys; returns what was started."""
        ...


def service_control_for(policy: Any, *, shell_for: Callable[[str], Any] | None = None,
                        cache_address: Callable[[str], tuple[str, int]] | None = None) -> ServiceControl:
    """The service control the policy names (`application.service_control`): the one place it is chosen, by
    name (`continuity.policy.registry`). `ssh` needs `shell_for` (a region's application host as a remote shell) and
    `cache_address` (a region's Redis host and port); the Airflow layer builds both from connections
    (`hooks.services`)."""
    from continuity.policy.registry import build

    application = policy.application
    kind = application.service_control if application is not None else None
    if kind is None:
        raise ServiceControlError(
            "no service control is configured: set application.service_control in the policy ('sandbox' for the "
            "local sandbox); starting the DR application needs it")
    return build("service_control", kind, setting="application.service_control", error=ServiceControlError,
                 policy=policy, shell_for=shell_for, cache_address=cache_address)
