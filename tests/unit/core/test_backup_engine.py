"""The backup engine against S3 (moto in-process: the same request handling as the S3 endpoint of the higher
tiers, without a socket) and real files: round trips through every location, tampering and corruption caught,
a location failing mid-upload leaving nothing, key rotation, KMS, manifests bound to their names, the catalog,
copies, server-side encryption and the WAL index. The faults that need a real endpoint (one killed, a network
cut) are in tests/component/test_backup_engine_faults.py."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import boto3
import pytest

from continuity.backup.engine import create_backup, load_manifest, restore_copy, rewrap, verify_copy
from continuity.storage.archive import IntegrityError
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring, MissingKeyError
from continuity.storage.locations import FileLocation, S3Location, StorageError
from continuity.storage.manifest import manifest_key_name
from continuity.storage.walindex import refresh_index


@pytest.fixture
def locations(moto_locations):
    return moto_locations


@pytest.fixture
def keyring() -> Keyring:
    return Keyring(keys={"kek-1": os.urandom(32)}, active="kek-1")


def _kms():
    return boto3.client("kms", region_name="us-east-1", aws_access_key_id="unit", aws_secret_access_key="unit")


def _objects(location: S3Location, backup_id: str) -> list[str]:
    return [k for k in location.list("") if backup_id in k]


def _pending_uploads(location: S3Location) -> list[str]:
    response = location.client.list_multipart_uploads(Bucket=location.bucket)
    return [u["Key"] for u in response.get("Uploads", [])]



def test_round_trip_through_every_location(locations, keyring) -> None:
    data = os.urandom(3 * 2**20) + b"compressible " * 2_000_000  # > one multipart part
    manifest = create_backup(io.BytesIO(data), kind="adhoc", keyring=keyring, locations=list(locations.values()),
                             required={"primary", "dr"}, label="round trip")
    assert set(manifest.locations) == {"primary", "dr", "archive"}
    assert manifest.plaintext_bytes == len(data) and manifest.stored_bytes < manifest.plaintext_bytes
    for name, location in locations.items():
        out = io.BytesIO()
        restore_copy(manifest, location, keyring, out)
        assert out.getvalue() == data, name
        assert verify_copy(manifest, location, keyring, deep=True).ok
    archive = locations["archive"]
    head = archive.client.head_object(Bucket=archive.bucket, Key=archive.prefix + manifest.data_key_name)
    assert head["StorageClass"] == "STANDARD_IA"


def test_any_single_region_restores_alone(locations, keyring) -> None:
    data = b"only the DR region survived\n" * 1000
    manifest = create_backup(io.BytesIO(data), kind="config", keyring=keyring, locations=list(locations.values()))
    dr_only = Catalog({"dr": locations["dr"]}, keyring)
    found, where = dr_only.get(manifest.backup_id)
    assert where == "dr"
    out = io.BytesIO()
    restore_copy(found, locations["dr"], keyring, out)
    assert out.getvalue() == data


def test_tampered_manifest_in_storage_is_rejected(locations, keyring) -> None:
    manifest = create_backup(io.BytesIO(b"x" * 1000), kind="adhoc", keyring=keyring, locations=[locations["dr"]])
    key = manifest_key_name(manifest.backup_id)
    raw = locations["dr"].get_bytes(key)
    locations["dr"].put_bytes(key, raw.replace(b'"plaintext_bytes": 1000', b'"plaintext_bytes": 1001'))
    catalog = Catalog({"dr": locations["dr"]}, keyring)
    assert manifest.backup_id not in [m.backup_id for m in catalog.list()]
    assert any("failed authentication" in p and manifest.backup_id in p for p in catalog.problems)
    with pytest.raises(IntegrityError, match="edited in storage"):
        catalog.get(manifest.backup_id, location="dr")


def test_corrupt_copy_is_caught_and_another_location_restores(locations, keyring) -> None:
    data = os.urandom(200_000)
    manifest = create_backup(io.BytesIO(data), kind="adhoc", keyring=keyring, locations=[locations["primary"], locations["dr"]])
    primary = locations["primary"]
    blob = bytearray(primary.get_bytes(manifest.data_key_name))
    blob[len(blob) // 2] ^= 0x40
    primary.put_bytes(manifest.data_key_name, bytes(blob))
    shallow = verify_copy(manifest, primary, keyring)
    assert not shallow.ok and "stored checksum" in shallow.reason, "a rewritten object changes its ETag"
    deep = verify_copy(manifest, primary, keyring, deep=True)
    assert not deep.ok and "failed authentication" in deep.reason and manifest.backup_id in deep.reason
    with pytest.raises(IntegrityError):
        restore_copy(manifest, primary, keyring, io.BytesIO())
    out = io.BytesIO()
    restore_copy(manifest, locations["dr"], keyring, out)
    assert out.getvalue() == data


def _vanishing_bucket(client, bucket: str):
    """A source whose reading deletes `bucket` (its uploads aborted) once 12 MiB went up everywhere."""
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})

    class SourceThatBreaksIt(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            if self.sent >= 40 * 2**20:
                return 0
            if self.sent == 12 * 2**20:  # after the first parts went up everywhere
                for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                client.delete_bucket(Bucket=bucket)
            block = os.urandom(len(buffer))
            buffer[:] = block
            self.sent += len(block)
            return len(block)

    return io.BufferedReader(SourceThatBreaksIt(), 2**20)


def test_a_required_location_failing_mid_upload_leaves_the_backup_degraded_in_the_other(locations, keyring) -> None:
    """#30 item 1: a required bucket disappears while the backup streams. "Required" means required while
    reachable: the backup is kept in the other required location, its manifest says which one it misses and
    why, a marker there owes it to the missing one, and nothing half-written is left behind."""
    from continuity.storage.degraded import marker_key

    primary, client = locations["primary"], locations["dr"].client
    source = _vanishing_bucket(client, "continuity-vanishing")
    vanishing = S3Location(name="dr", region="us-west-2", client=client, bucket="continuity-vanishing")
    manifest = create_backup(source, kind="adhoc", keyring=keyring, locations=[primary, vanishing],
                             backup_id="adhoc-degraded-mid-upload")
    assert set(manifest.locations) == {"primary"}
    assert "location dr (s3://continuity-vanishing/data/adhoc/" in manifest.details["degraded"]["dr"]
    assert verify_copy(manifest, primary, keyring, deep=True).ok
    assert primary.head(marker_key("dr", manifest.backup_id)) is not None
    assert _pending_uploads(primary) == []


def test_the_only_required_location_failing_mid_upload_leaves_nothing_anywhere(locations, keyring) -> None:
    """When no required location takes the backup it fails naming the one that failed, and the optional copy
    already written is removed: no location shows a backup no required location holds."""
    primary, client = locations["primary"], locations["dr"].client
    source = _vanishing_bucket(client, "continuity-vanishing-2")
    vanishing = S3Location(name="dr", region="us-west-2", client=client, bucket="continuity-vanishing-2")
    backup_id = "adhoc-failing-mid-upload"
    with pytest.raises(StorageError, match=r"no required location took it \(dr: location dr "
                                           r"\(s3://continuity-vanishing-2/data/adhoc/"):
        create_backup(source, kind="adhoc", keyring=keyring, locations=[primary, vanishing], required={"dr"},
                      backup_id=backup_id)
    assert _objects(primary, backup_id) == []
    assert _pending_uploads(primary) == []


def test_optional_location_failing_is_left_out_not_fatal(locations, keyring, tmp_path: Path) -> None:
    broken = FileLocation(name="archive", region="eu-west-1", path=Path("/proc/continuity-cannot-write-here"))
    manifest = create_backup(io.BytesIO(b"data" * 1000), kind="adhoc", keyring=keyring,
                             locations=[locations["primary"], broken], required={"primary"})
    assert set(manifest.locations) == {"primary"}


def test_key_rotation_then_retire_restores_with_the_new_kek_alone(locations, keyring) -> None:
    datas = [os.urandom(50_000) for _ in range(3)]
    manifests = [create_backup(io.BytesIO(d), kind="adhoc", keyring=keyring, locations=list(locations.values()))
                 for d in datas]
    rotated = keyring.with_new_key("kek-2")
    stored_before = {m.backup_id: locations["dr"].get_bytes(m.data_key_name) for m in manifests}
    for name, location in locations.items():
        for manifest in manifests:
            rewrap(load_manifest(location, manifest.backup_id, rotated), location, rotated, to_kek="kek-2")
    new_only = Keyring(keys={"kek-2": rotated.keys["kek-2"]}, active="kek-2")
    for data, manifest in zip(datas, manifests):
        for location in locations.values():
            reloaded = load_manifest(location, manifest.backup_id, new_only)
            assert reloaded.key["kek_id"] == "kek-2"
            out = io.BytesIO()
            restore_copy(reloaded, location, new_only, out)
            assert out.getvalue() == data
        assert locations["dr"].get_bytes(manifest.data_key_name) == stored_before[manifest.backup_id], "payload untouched"
    with pytest.raises(MissingKeyError, match="needs KEK 'kek-1'"):
        restore_copy(manifests[0], locations["dr"], new_only, io.BytesIO())


def test_kms_wraps_data_keys_on_the_local_endpoint(locations) -> None:
    kms = _kms()
    key_id = kms.create_key(Description="continuity test KEK")["KeyMetadata"]["KeyId"]
    keyring = Keyring(keys={}, active=f"kms:{key_id}", kms_client=kms)
    data = os.urandom(100_000)
    manifest = create_backup(io.BytesIO(data), kind="adhoc", keyring=keyring, locations=[locations["dr"]])
    assert manifest.key["alg"] == "aws-kms" and manifest.key["kek_id"] == f"kms:{key_id}"
    out = io.BytesIO()
    restore_copy(load_manifest(locations["dr"], manifest.backup_id, keyring), locations["dr"], keyring, out)
    assert out.getvalue() == data


def test_kms_unwraps_only_under_the_key_the_keyring_trusts(locations) -> None:
    from continuity.storage.keys import WrappedKey, WrongKeyError

    kms = _kms()
    ours = kms.create_key(Description="continuity KEK")["KeyMetadata"]["KeyId"]
    other = kms.create_key(Description="another key the same role may use")["KeyMetadata"]["KeyId"]
    keyring = Keyring(keys={}, active=f"kms:{ours}", kms_client=kms)
    planter = Keyring(keys={}, active=f"kms:{other}", kms_client=kms)
    planted = create_backup(io.BytesIO(b"planted"), kind="adhoc", keyring=planter, locations=[locations["dr"]])
    with pytest.raises(MissingKeyError, match=f"names KMS key 'kms:{other}', which this keyring does not trust"):
        load_manifest(locations["dr"], planted.backup_id, keyring)
    # The same blob relabelled as ours: KMS itself refuses it once the expected KeyId is passed.
    _, wrapped = planter.new_data_key("archive-x")
    relabelled = WrappedKey(f"kms:{ours}", "aws-kms", wrapped.wrapped)
    with pytest.raises(WrongKeyError, match="could not unwrap"):
        keyring.unwrap(relabelled, archive_id="archive-x")
    # And the encryption context binds it to its archive.
    _, mine = keyring.new_data_key("archive-y")
    with pytest.raises(WrongKeyError):
        keyring.unwrap(mine, archive_id="archive-z")
    assert len(keyring.unwrap(mine, archive_id="archive-y")) == 32


def test_a_manifest_is_bound_to_the_name_it_is_stored_under(locations, keyring) -> None:
    first = create_backup(io.BytesIO(b"A" * 1000), kind="adhoc", keyring=keyring, locations=[locations["dr"]])
    second = create_backup(io.BytesIO(b"B" * 1000), kind="adhoc", keyring=keyring, locations=[locations["dr"]])
    dr = locations["dr"]
    dr.put_bytes(manifest_key_name(second.backup_id), dr.get_bytes(manifest_key_name(first.backup_id)))
    with pytest.raises(IntegrityError, match=f"holds the manifest of backup {first.backup_id}, not of {second.backup_id}"):
        load_manifest(dr, second.backup_id, keyring)
    catalog = Catalog({"dr": dr}, keyring)
    with pytest.raises(StorageError, match=f"not of {second.backup_id}"):
        catalog.get(second.backup_id)
    listed = [m.backup_id for m in catalog.list(location="dr")]
    assert second.backup_id not in listed and first.backup_id in listed
    assert any(manifest_key_name(second.backup_id) in p for p in catalog.problems)


def test_a_malformed_manifest_is_a_problem_not_a_broken_listing(locations, keyring) -> None:
    good = create_backup(io.BytesIO(b"good"), kind="adhoc", keyring=keyring, locations=[locations["dr"]])
    dr = locations["dr"]
    for name, body in (("junk", b"{not json"), ("no-key", b'{"backup_id": "no-key"}'),
                       ("bad-wrap", good.model_copy(update={"backup_id": "bad-wrap",
                                                            "key": {"kek_id": "kek-1"}}).to_json())):
        dr.put_bytes(manifest_key_name(name), body)
    try:
        catalog = Catalog({"dr": dr}, keyring)
        assert good.backup_id in [m.backup_id for m in catalog.list(location="dr")]
        for name in ("junk", "no-key", "bad-wrap"):
            assert any(manifest_key_name(name) in p for p in catalog.problems), (name, catalog.problems)
    finally:
        for name in ("junk", "no-key", "bad-wrap"):
            dr.delete(manifest_key_name(name))


def test_a_manifest_update_never_undoes_a_rotation_that_happened_meanwhile(locations, keyring) -> None:
    from continuity.backup.engine import record_verification

    data = os.urandom(20_000)
    manifest = create_backup(io.BytesIO(data), kind="adhoc", keyring=keyring, locations=[locations["dr"]])
    dr = locations["dr"]
    validator_view = load_manifest(dr, manifest.backup_id, keyring)  # validation read it ...
    check = verify_copy(validator_view, dr, keyring)
    rotated = keyring.with_new_key("kek-2")  # ... then the key was rotated and the old KEK retired ...
    rewrap(load_manifest(dr, manifest.backup_id, rotated), dr, rotated, to_kek="kek-2")
    new_only = rotated.without("kek-1")
    record_verification(validator_view, dr, rotated, check)  # ... and validation writes its result.
    reloaded = load_manifest(dr, manifest.backup_id, new_only)
    assert reloaded.key["kek_id"] == "kek-2" and reloaded.locations["dr"].verify_result.startswith("ok")
    out = io.BytesIO()
    restore_copy(reloaded, dr, new_only, out)
    assert out.getvalue() == data


def test_catalog_queries(locations, keyring) -> None:
    base = create_backup(io.BytesIO(b"base"), kind="physical", keyring=keyring, locations=[locations["dr"]])
    time.sleep(0.01)
    wal = create_backup(io.BytesIO(b"wal"), kind="wal", keyring=keyring, locations=[locations["dr"]],
                        depends_on=[base.backup_id])
    incremental = create_backup(io.BytesIO(b"more wal"), kind="wal", keyring=keyring, locations=[locations["dr"]],
                                depends_on=[wal.backup_id])
    catalog = Catalog({"dr": locations["dr"]}, keyring)
    assert catalog.latest("wal").backup_id == incremental.backup_id
    assert [m.backup_id for m in catalog.dependencies(incremental.backup_id)] == [wal.backup_id, base.backup_id]
    kinds = {m.kind for m in catalog.list(location="dr", since=base.finished_at)}
    assert kinds == {"physical", "wal"}
    with pytest.raises(StorageError, match="not found"):
        catalog.get("no-such-backup")


def test_copy_between_locations_server_side_and_streamed(locations, keyring, tmp_path: Path) -> None:
    data = os.urandom(30_000)
    manifest = create_backup(io.BytesIO(data), kind="adhoc", keyring=keyring, locations=[locations["primary"]])
    key = manifest.data_key_name
    locations["dr"].copy_from(locations["primary"], key)  # same endpoint: server-side
    files = FileLocation(name="local", region="us-east-1", path=tmp_path)
    files.copy_from(locations["primary"], key)  # across kinds: streamed
    for copy in (locations["dr"], files):
        assert copy.head(key).size == manifest.stored_bytes
        assert verify_copy(manifest, copy, keyring, deep=True).ok


def test_server_side_encryption_on_top(locations, keyring) -> None:
    dr = locations["dr"]
    sse = S3Location(name="dr", region=dr.region, client=dr.client, bucket=dr.bucket, prefix="sse/",
                     server_side_encryption="AES256")
    manifest = create_backup(io.BytesIO(os.urandom(10 * 2**20)), kind="adhoc", keyring=keyring, locations=[sse])
    head = dr.client.head_object(Bucket=dr.bucket, Key="sse/" + manifest.data_key_name)
    assert head["ServerSideEncryption"] == "AES256"


def test_the_wal_index_on_s3_reads_packs_then_lists_after_them(locations, keyring) -> None:
    """On the S3 endpoint: the refresh compares ETags from the listing, the catalog lists with StartAfter
    past the packs, and a pack edited in the bucket is refused (every manifest is read instead)."""
    dr = locations["dr"]
    assert isinstance(dr, S3Location)
    location = S3Location(name="dr", region=dr.region, client=dr.client, bucket=dr.bucket,
                          prefix=f"walindex-tests-{os.urandom(4).hex()}/")

    def wal(segno: int) -> str:
        name = f"000000010000000000000{segno:03X}"
        create_backup(io.BytesIO(name.encode()), kind="wal", backup_id=f"wal-{name}", keyring=keyring,
                      locations=[location], source_info={"timeline": 1, "wal_file": name})
        return f"wal-{name}"

    packed = [wal(n) for n in (1, 2, 3, 5)]
    built = refresh_index(location, keyring)
    assert (built.added, built.packs_written) == (4, 1)
    assert refresh_index(location, keyring).kept == 4, "unchanged ETags: nothing read again"
    later = [wal(6), wal(4)]  # 4 arrives late, below the pack's last segment
    reads: list[str] = []
    get_bytes = location.get_bytes
    location.get_bytes = lambda key: reads.append(key) or get_bytes(key)  # type: ignore[method-assign]
    catalog = Catalog({"dr": location}, keyring)
    assert sorted(m.backup_id for m in catalog.list(kind="wal")) == sorted(packed + later)
    assert not [k for k in reads if k in {manifest_key_name(i) for i in packed}], "packed manifests not read"

    [pack] = list(location.list("index/wal/"))
    location.put_bytes(pack, get_bytes(pack)[:-9] + b"\0" * 9)
    catalog = Catalog({"dr": location}, keyring)
    assert sorted(m.backup_id for m in catalog.list(kind="wal")) == sorted(packed + later)
    assert any("reading every WAL manifest instead" in p for p in catalog.problems), catalog.problems
