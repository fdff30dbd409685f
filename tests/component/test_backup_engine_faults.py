"""The backup engine when the S3 endpoint itself fails: killed mid-backup, and the network cut mid-restore. These
need a real endpoint over HTTP (moto's server); the engine's other behaviour is tested in the unit tier."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from botocore.config import Config

from continuity.backup.engine import create_backup, restore_to_path
from continuity.postgres.cluster import stop_pid
from continuity.storage.archive import IntegrityError
from continuity.storage.keys import Keyring
from continuity.storage.locations import FileLocation, S3Location, StorageError

from tests.support.s3server import S3Server, start_s3_server
from tests.support.netfault import CuttingProxy


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(keys={"kek-1": os.urandom(32)}, active="kek-1")


def _source_that_kills(process) -> io.BufferedReader:
    class SourceThatKillsTheEndpoint(io.RawIOBase):
        sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            if self.sent >= 30 * 2**20:
                return 0
            if self.sent == 10 * 2**20:
                stop_pid(process.pid, name="private moto server")
            buffer[:] = os.urandom(len(buffer))
            self.sent += len(buffer)
            return len(buffer)

    return io.BufferedReader(SourceThatKillsTheEndpoint(), 2**20)


@pytest.mark.parametrize("both_required", [False, True], ids=["only-s3-required", "both-required"])
def test_s3_endpoint_stopped_mid_upload(tmp_path: Path, keyring, both_required: bool) -> None:
    """A private S3 endpoint is killed mid-backup. When it was the only required location the backup fails naming
    it and the file location beside it keeps nothing; when the file location is required too, the backup is kept
    there, degraded, naming the endpoint's failure (#30 item 1: required while reachable)."""
    server, process = start_s3_server()
    try:
        client = server.client()
        client.create_bucket(Bucket="doomed")
        s3 = S3Location(name="doomed", region="us-east-1", client=client, bucket="doomed")
        files = FileLocation(name="local", region="us-east-1", path=tmp_path / "local")
        source = _source_that_kills(process)
        if not both_required:
            with pytest.raises(StorageError, match=r"no required location took it \(doomed: location doomed "
                                                   r"\(s3://doomed/data/adhoc/adhoc-endpoint-down.cta\)"):
                create_backup(source, kind="adhoc", keyring=keyring, locations=[files, s3], required={"doomed"},
                              backup_id="adhoc-endpoint-down")
            assert [p for p in (tmp_path / "local").rglob("*") if p.is_file()] == []
            return
        manifest = create_backup(source, kind="adhoc", keyring=keyring, locations=[files, s3],
                                 backup_id="adhoc-endpoint-down")
        assert set(manifest.locations) == {"local"} and manifest.plaintext_bytes == 30 * 2**20
        assert "location doomed (s3://doomed/data/adhoc/adhoc-endpoint-down.cta)" in manifest.details["degraded"]["doomed"]
        stored = sorted(str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*")
                        if p.is_file() and not p.name.endswith(".meta"))
        assert stored == ["data/adhoc/adhoc-endpoint-down.cta", "degraded/doomed/adhoc-endpoint-down.json",
                          "manifests/adhoc-endpoint-down.json"], stored
    finally:
        stop_pid(process.pid, name="private moto server")


def test_a_network_cut_mid_restore_falls_back_and_leaves_no_plaintext(s3_server, keyring, tmp_path) -> None:
    client = s3_server.client()
    for bucket in ("cut-primary", "cut-dr"):
        client.create_bucket(Bucket=bucket)
    primary = S3Location(name="primary", region="us-east-1", client=client, bucket="cut-primary")
    dr = S3Location(name="dr", region="us-east-1", client=client, bucket="cut-dr")
    data = os.urandom(3 * 2**20)
    manifest = create_backup(io.BytesIO(data), kind="adhoc", keyring=keyring, locations=[primary, dr])
    proxy = CuttingProxy(upstream_port=s3_server.port, limit=200_000)
    try:
        through_proxy = S3Server(url=proxy.url, port=proxy.port, pid=s3_server.pid)
        cut_client = through_proxy.client(config=Config(retries={"max_attempts": 1}))
        flaky = S3Location(name="primary", region="us-east-1", client=cut_client, bucket="cut-primary")
        target = tmp_path / "restored.bin"
        with pytest.raises(IntegrityError, match="no location holds a good copy: primary: location primary"):
            restore_to_path(manifest, [flaky], keyring, target, report=print)
        assert proxy.cuts >= 1
        assert sorted(p.name for p in tmp_path.iterdir()) == [], "no partial plaintext left behind"
        used, size = restore_to_path(manifest, [flaky, dr], keyring, target, report=print)
        assert (used, size) == ("dr", len(data))
        assert target.read_bytes() == data
        assert target.stat().st_mode & 0o777 == 0o600, "plaintext is private to its owner"
    finally:
        proxy.close()
