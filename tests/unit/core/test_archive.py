"""The archive format with real AES-256-GCM and zstd: round trips and every tampering the issue lists."""

from __future__ import annotations

import io
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from continuity.storage.archive import (
    FORMAT_VERSION,
    MAGIC,
    ArchiveError,
    IntegrityError,
    read_archive,
    read_header,
    write_archive,
)
from continuity.storage.keys import Keyring, KeyringError, MissingKeyError, WrongKeyError

CHUNK = 4096
KEYRING = Keyring(keys={"kek-a": os.urandom(32)}, active="kek-a")


def _archive(data: bytes, *, archive_id: str = "backup-1", chunk: int = CHUNK, data_key: bytes | None = None,
             compression: str = "zstd") -> bytes:
    if data_key is None:
        data_key, wrapped = KEYRING.new_data_key(archive_id)
    else:
        wrapped = KEYRING.wrap(data_key, archive_id=archive_id)
    out = io.BytesIO()
    write_archive(io.BytesIO(data), out, archive_id=archive_id, data_key=data_key, wrapped_key=wrapped, chunk_size=chunk,
                  compression=compression)
    return out.getvalue()


def _read(blob: bytes, keyring: Keyring = KEYRING) -> bytes:
    out = io.BytesIO()
    read_archive(io.BytesIO(blob), out, where="test",
                 data_key_for=lambda h: keyring.unwrap(h.wrapped_key, archive_id=h.archive_id))
    return out.getvalue()


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header bytes and the list of records (length prefix + sealed chunk)."""
    header_len = struct.unpack(">I", blob[10:14])[0]
    position = 14 + header_len
    header, records = blob[:position], []
    while position < len(blob):
        length = struct.unpack(">I", blob[position:position + 4])[0]
        records.append(blob[position:position + 4 + length])
        position += 4 + length
    return header, records


def _compressible(size: int) -> bytes:
    words = [b"video", b"annotation", b"frame", b"pedestrian", b"0.93", b"bbox", b"\n"]
    rng = random.Random(size)
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


# Sizes around the chunk size: incompressible data makes the compressed stream cross chunk edges.
EDGE_SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 7 * CHUNK + 3, 300_000]


@pytest.mark.parametrize("size", EDGE_SIZES)
@pytest.mark.parametrize("flavour", ["random", "compressible"])
def test_round_trip_edges(size: int, flavour: str) -> None:
    data = os.urandom(size) if flavour == "random" else _compressible(size)
    assert _read(_archive(data)) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=40_000), chunk=st.sampled_from([16, 1000, CHUNK]))
def test_round_trip_property(data: bytes, chunk: int) -> None:
    assert _read(_archive(data, chunk=chunk)) == data


def test_header_carries_magic_version_and_wrapped_key() -> None:
    blob = _archive(b"hello")
    assert blob.startswith(MAGIC)
    header = read_header(io.BytesIO(blob), where="test")
    assert header.archive_id == "backup-1" and header.wrapped_key.kek_id == "kek-a"
    assert header.chunk_size == CHUNK


@settings(max_examples=80, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_detected(position: int, bit: int) -> None:
    blob = bytearray(_ARCHIVE_OF_MANY_CHUNKS)
    blob[position % len(blob)] ^= 1 << bit
    # In the header a flip may land in the wrapped key or its KEK id: then unwrapping is what refuses.
    with pytest.raises((ArchiveError, KeyringError)):
        _read(bytes(blob))


_DATA_OF_MANY_CHUNKS = os.urandom(6 * CHUNK + 100)
_ARCHIVE_OF_MANY_CHUNKS = _archive(_DATA_OF_MANY_CHUNKS)


def test_every_bit_of_the_header_and_record_lengths_is_covered() -> None:
    """Exhaustive where random sampling is thin: the header and every record's length prefix."""
    header, records = _split(_ARCHIVE_OF_MANY_CHUNKS)
    positions = list(range(len(header)))
    offset = len(header)
    for record in records:
        positions.extend(range(offset, offset + 4))
        offset += len(record)
    for position in positions:
        for bit in range(8):
            blob = bytearray(_ARCHIVE_OF_MANY_CHUNKS)
            blob[position] ^= 1 << bit
            with pytest.raises((ArchiveError, KeyringError)):
                _read(bytes(blob))


def test_flipped_bit_in_a_chunk_names_archive_and_chunk() -> None:
    header, records = _split(_ARCHIVE_OF_MANY_CHUNKS)
    tampered = bytearray(records[3])
    tampered[20] ^= 0x01
    blob = header + b"".join(records[:3]) + bytes(tampered) + b"".join(records[4:])
    with pytest.raises(IntegrityError, match=r"archive backup-1\): chunk 3 failed authentication"):
        _read(blob)


@pytest.mark.parametrize("keep", range(0, 7))
def test_truncation_exactly_at_each_chunk_boundary(keep: int) -> None:
    header, records = _split(_ARCHIVE_OF_MANY_CHUNKS)
    assert len(records) == 7
    blob = header + b"".join(records[:keep])
    with pytest.raises(IntegrityError, match=r"archive backup-1\).*truncated"):
        _read(blob)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0))
def test_truncation_anywhere(cut: int) -> None:
    blob = _ARCHIVE_OF_MANY_CHUNKS[: cut % len(_ARCHIVE_OF_MANY_CHUNKS)]
    with pytest.raises(ArchiveError):
        _read(blob)


def test_dropped_reordered_and_duplicated_chunks() -> None:
    header, records = _split(_ARCHIVE_OF_MANY_CHUNKS)
    dropped = header + b"".join(records[:2] + records[3:])
    reordered = header + b"".join([records[0], records[2], records[1], *records[3:]])
    duplicated = header + b"".join(records[:3] + [records[2]] + records[3:])
    for blob, chunk in [(dropped, 2), (reordered, 1), (duplicated, 3)]:
        with pytest.raises(IntegrityError, match=rf"chunk {chunk} failed authentication"):
            _read(blob)


def test_chunk_spliced_from_another_archive_under_the_same_key() -> None:
    data_key = os.urandom(32)
    first = _archive(os.urandom(5 * CHUNK), archive_id="backup-1", data_key=data_key)
    second = _archive(os.urandom(5 * CHUNK), archive_id="backup-2", data_key=data_key)
    header_1, records_1 = _split(first)
    _, records_2 = _split(second)
    spliced = header_1 + b"".join(records_1[:2] + [records_2[2]] + records_1[3:])
    with pytest.raises(IntegrityError, match=r"archive backup-1\): chunk 2 failed authentication"):
        read_archive(io.BytesIO(spliced), io.BytesIO(), where="test", data_key_for=lambda _h: data_key)


def test_newer_format_version_is_refused_clearly() -> None:
    blob = bytearray(_archive(b"future"))
    blob[8:10] = struct.pack(">H", FORMAT_VERSION + 1)
    with pytest.raises(ArchiveError, match=rf"format version {FORMAT_VERSION + 1} is newer than this reader"):
        _read(bytes(blob))


def test_not_an_archive() -> None:
    with pytest.raises(ArchiveError, match="not a Continuity archive"):
        _read(b"PK\x03\x04 this is a zip file, not an archive")


def test_wrong_key_material_names_the_kek() -> None:
    impostor = Keyring(keys={"kek-a": os.urandom(32)}, active="kek-a")
    with pytest.raises(WrongKeyError, match="KEK 'kek-a' does not unwrap"):
        _read(_archive(b"secret"), impostor)


def test_missing_key_names_the_kek_needed() -> None:
    other = Keyring(keys={"kek-b": os.urandom(32)}, active="kek-b")
    with pytest.raises(MissingKeyError, match="needs KEK 'kek-a', which is not in the keyring"):
        _read(_archive(b"secret"), other)


def test_memory_is_bounded_by_chunks_not_size() -> None:
    """The writer reads the source in blocks and never holds the whole stream."""

    class CountingSource(io.RawIOBase):
        def __init__(self, total: int) -> None:
            self.left = total
            self.largest_read = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            assert size != -1, "the writer must never read everything at once"
            self.largest_read = max(self.largest_read, size)
            n = min(size, self.left)
            self.left -= n
            return b"\0" * n

    class DiscardingSink:
        def __init__(self) -> None:
            self.largest_write = 0

        def write(self, data: bytes) -> None:
            self.largest_write = max(self.largest_write, len(data))

    source, sink = CountingSource(64 * 2**20), DiscardingSink()
    data_key, wrapped = KEYRING.new_data_key("big")
    write_archive(source, sink, archive_id="big", data_key=data_key, wrapped_key=wrapped, chunk_size=CHUNK)
    assert source.largest_read <= 1024 * 1024
    assert sink.largest_write <= CHUNK + 64


# -- compression "none": a source its producer compressed (pg_dump's own compression) --
@pytest.mark.parametrize("size", EDGE_SIZES)
def test_uncompressed_round_trip_in_chunks_of_the_plaintext(size: int) -> None:
    data = os.urandom(size)
    blob = _archive(data, compression="none")
    assert read_header(io.BytesIO(blob), where="test").compression == "none"
    _header, records = _split(blob)
    assert len(records) == max(1, -(-size // CHUNK))  # one record per chunk of plaintext, at least the final one
    assert _read(blob) == data


def test_uncompressed_archive_catches_every_flip_of_header_and_lengths_and_chunks() -> None:
    blob = _archive(_DATA_OF_MANY_CHUNKS, compression="none")
    header, records = _split(blob)
    positions = list(range(len(header)))
    offset = len(header)
    for record in records:
        positions.extend([*range(offset, offset + 4), offset + 4 + len(record) // 2])
        offset += len(record)
    for position in positions:
        tampered = bytearray(blob)
        tampered[position] ^= 0x10
        with pytest.raises((ArchiveError, KeyringError)):
            _read(bytes(tampered))


@pytest.mark.parametrize("keep", range(0, 7))
def test_uncompressed_archive_truncated_at_a_chunk_boundary_is_refused(keep: int) -> None:
    header, records = _split(_archive(_DATA_OF_MANY_CHUNKS, compression="none"))
    assert len(records) == 7
    with pytest.raises(IntegrityError, match=r"archive backup-1\).*truncated"):
        _read(header + b"".join(records[:keep]))


def test_unknown_compression_is_refused_before_anything_is_written() -> None:
    out = io.BytesIO()
    data_key, wrapped = KEYRING.new_data_key("backup-1")
    with pytest.raises(ValueError, match="compression must be one of zstd, none, got 'gzip'"):
        write_archive(io.BytesIO(b"x"), out, archive_id="backup-1", data_key=data_key, wrapped_key=wrapped,
                      compression="gzip")
    assert out.getvalue() == b""
