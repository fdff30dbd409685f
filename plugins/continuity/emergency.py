"""What the CLI needs to reach backups without Airflow: policy, keyring and storage clients.

With a sandbox named (`--root`, or $CONTINUITY_SANDBOX from `continuity sandbox env`) the CLI needs no other
flags (its S3 endpoint and keyring are used; a sandbox merely present on disk is never used); elsewhere `--policy`, `--key-file` / $CONTINUITY_KEYRING(_FILE) and the standard AWS credential
chain (AWS_PROFILE, AWS_ENDPOINT_URL, ...) say where things are; an endpoint per region (one object
store per region, as docker-compose.yaml has them) comes from $CONTINUITY_S3_ENDPOINT_<REGION>, e.g.
CONTINUITY_S3_ENDPOINT_US_EAST_1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring, MissingKeyError
from continuity.policy.model import Policy
from continuity.storage.locations import StorageLocation, locations_from_policy


class LocalDeployment(Protocol):
    """A deployment on this machine that hands out its keyring and storage (the sandbox is one)."""

    key_file: Path

    def keyring(self) -> Keyring: ...

    def storage_locations(self) -> dict[str, StorageLocation]: ...

    def s3_client(self, region: str = ...) -> Any: ...

    def write_connections(self) -> None: ...


@dataclass
class Context:
    policy: Policy
    keyring: Keyring
    keyring_file: Path | None
    locations: dict[str, StorageLocation]
    sandbox: LocalDeployment | None = None

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.locations, self.keyring)

    @property
    def required(self) -> set[str]:
        return self.policy.storage.required()

    def s3_client(self, region: str) -> Any:
        """An S3 client for the application's buckets: the sandbox's endpoint, else the AWS credential chain."""
        if self.sandbox is not None:
            return self.sandbox.s3_client(region)
        return region_s3_client(region)


def region_s3_client(region: str) -> Any:
    """The AWS credential chain's S3 client for `region`, at $CONTINUITY_S3_ENDPOINT_<REGION> when set."""
    import boto3

    endpoint = os.environ.get(f"CONTINUITY_S3_ENDPOINT_{region.upper().replace('-', '_')}")
    return boto3.client("s3", region_name=region, **({"endpoint_url": endpoint} if endpoint else {}))


def build_context(*, policy: Policy, key_file: str | None, sandbox: LocalDeployment | None = None) -> Context:
    """The CLI's context; `sandbox`, when the caller found one, supplies what flags do not."""
    keyring_file: Path | None = None
    if key_file:
        keyring_file = Path(key_file)
        keyring = Keyring.from_file(keyring_file)
    else:
        env_ring = Keyring.from_environment()
        if env_ring is not None:
            keyring = env_ring
        elif sandbox is not None:
            keyring_file = sandbox.key_file
            keyring = sandbox.keyring()
        else:
            raise MissingKeyError(
                "no keyring: pass --key-file, or set $CONTINUITY_KEYRING_FILE or $CONTINUITY_KEYRING "
                "(for the local sandbox: `eval \"$(continuity sandbox env)\"` or --root DIR)"
            )

    if sandbox is not None:
        locations = sandbox.storage_locations()
    else:
        locations = locations_from_policy(policy, lambda loc: region_s3_client(loc.region), base_dir=Path.cwd())
    return Context(policy=policy, keyring=keyring, keyring_file=keyring_file, locations=locations, sandbox=sandbox)
