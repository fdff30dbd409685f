"""The unit tier: no network and no processes. A test that needs either belongs to a costlier tier (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest
from pytest_socket import disable_socket, enable_socket


class ProcessRefused(RuntimeError):
    """A unit test started a process: it belongs to the component tier or above."""


def _refuse(*args: object, **kwargs: object) -> None:
    raise ProcessRefused(f"the unit tier starts no process (asked: {args[0] if args else kwargs.get('args')!r})")


# What a sandbox fixture of a costlier tier leaves in this worker's environment for the rest of the session
# (pytest-xdist runs the tiers' modules one after another in one process): a unit test never sees a sandbox.
SANDBOX_VARIABLES = ("CONTINUITY_SANDBOX", "CONTINUITY_WAL_SPOOL", "CONTINUITY_S3_ENDPOINT_", "CONTINUITY_KEYRING",
                     "AIRFLOW_CONN_")


@pytest.fixture(autouse=True)
def _no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(SANDBOX_VARIABLES):
            monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def _no_socket_no_subprocess(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    disable_socket(allow_unix_socket=False)
    monkeypatch.setattr(subprocess, "Popen", _refuse)
    try:
        yield
    finally:
        enable_socket()


@pytest.fixture
def moto_locations() -> Iterator[dict]:
    """The shipped policy's storage locations on moto's in-process S3 (the same request handling as its server,
    without a socket): each bucket made in its region, under a prefix of the test's own."""
    import boto3
    from moto import mock_aws

    from continuity.policy.loading import load_policy
    from continuity.storage.locations import locations_from_policy

    with mock_aws():
        policy = load_policy()
        clients = {}
        for location in policy.storage.locations:
            client = clients.setdefault(location.region, boto3.client(
                "s3", region_name=location.region, aws_access_key_id="unit", aws_secret_access_key="unit"))
            config = {} if location.region == "us-east-1" else {
                "CreateBucketConfiguration": {"LocationConstraint": location.region}}
            client.create_bucket(Bucket=location.bucket, **config)
        built = locations_from_policy(policy, lambda location: clients[location.region])
        for location in built.values():
            location.prefix = "engine-tests/"
        yield built
