"""The application tier of a region, as Airflow connections describe it: its URL and the probe user.

The region's http connection (`application.regions.<region>.conn_id`) gives the URL (host, port,
schema) and, in its extra, `instances` (each instance's URL, for /health); the probe connection
(`application.probe_conn_id`) the user the synthetic transactions log in as (login = e-mail).
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import BaseHook

from continuity.policy.model import Policy
from continuity.health.probes import ApplicationProbe, ProbeTarget, run_synthetic_transactions


class ApplicationProbeHook(BaseHook):
    """Runs the policy's synthetic transactions against one region's application.

    :param policy: the policy (its application section names the connections).
    :param region: the region whose application to probe.
    """

    def __init__(self, *, policy: Policy, region: str) -> None:
        super().__init__()
        if policy.application is None:
            raise ValueError("the policy has no application section: nothing to probe. HINT: see include/policy.yaml")
        if region not in policy.application.regions:
            raise ValueError(f"application.regions has no {region!r} (known: {sorted(policy.application.regions)})")
        self.policy = policy
        self.region = region

    def target(self) -> ProbeTarget:
        spec = self.policy.application.regions[self.region]
        conn = self.get_connection(spec.conn_id)
        return ProbeTarget.from_connection(self.region, host=conn.host or "", port=conn.port, schema=conn.schema,
                                           extra=conn.extra_dejson)

    def run(self, *, read_only: bool = False) -> ApplicationProbe:
        application = self.policy.application
        credentials = self.get_connection(application.probe_conn_id)
        return run_synthetic_transactions(
            self.target(), email=credentials.login or "", password=credentials.password or "",
            functions={name: f.transaction for name, f in application.functions.items()}, read_only=read_only,
            timeout=application.probe_timeout.total_seconds(),
            processing_timeout=application.processing_timeout.total_seconds())

    def verify_database(self, dsn: str, *, uploaded_before: datetime | None = None) -> ApplicationProbe:
        """The read-only synthetic transactions on a verification instance of this region that uses the
        database `dsn` (a restored copy) and the region's object bucket; the instance is always stopped.
        `uploaded_before`: how far the region's object replica holds copies (read the newest video older)."""
        from continuity.hooks.services import get_service_control

        application = self.policy.application
        control = get_service_control(self.policy)
        url = control.start_verification_instance(self.region, dsn=dsn)
        try:
            credentials = self.get_connection(application.probe_conn_id)
            return run_synthetic_transactions(
                ProbeTarget(region=self.region, url=url), email=credentials.login or "",
                password=credentials.password or "",
                functions={name: f.transaction for name, f in application.functions.items()}, read_only=True,
                timeout=application.probe_timeout.total_seconds(), uploaded_before=uploaded_before)
        finally:
            control.stop_verification_instance(url)
