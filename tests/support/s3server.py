"""moto's S3 server as a process of the test's own: the endpoint a real client talks to over HTTP."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import boto3

from continuity.postgres.cluster import free_port, wait_for_port


@dataclass(frozen=True)
class S3Server:
    """moto's S3 server over HTTP on loopback: the endpoint a real client talks to, its process ours to kill."""

    url: str
    port: int
    pid: int

    def client(self, region: str = "us-east-1", **kwargs):
        return boto3.client("s3", endpoint_url=self.url, region_name=region, aws_access_key_id="component",
                            aws_secret_access_key="component", **kwargs)


def start_s3_server() -> tuple[S3Server, subprocess.Popen]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_port(port, what="moto S3 server")
    return S3Server(url=f"http://127.0.0.1:{port}", port=port, pid=process.pid), process
