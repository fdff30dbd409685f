"""The archive format: zstd (or nothing, for a source that compresses itself), then AES-256-GCM in
authenticated chunks, streamed in one pass.

Layout (docs/archive-format.md has the full description):

    magic "CNTYARCH" | u16 format version | u32 header length | header (JSON)
    record*  where record = u32 ciphertext length | ciphertext (chunk + 16-byte GCM tag)

Chunk i is sealed under the archive's data key with nonce = 8-byte random prefix || u32 i and
associated data = archive id || SHA-256(header) || u64 i || final flag. The last record is the only
one sealed with final=1, and there is always one (possibly empty), so a truncation at any point,
a dropped, reordered, duplicated or foreign chunk, and any flipped bit fail authentication.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import zstandard
from backports.zstd import ZstdDecompressor
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from continuity.storage.keys import WrappedKey

MAGIC = b"CNTYARCH"
FORMAT_VERSION = 1
DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_CHUNK_SIZE = 64 * 1024 * 1024
ZSTD_LEVEL = 3
# "none" is for sources already compressed by their producer (pg_dump's own compression): a second
# pass would spend CPU for nothing. The header, and so every chunk's associated data, names it.
COMPRESSIONS = ("zstd", "none")
# One zstd worker thread: compression overlaps hashing and encryption in the calling thread,
# using about two cores at most whatever the machine.
ZSTD_WORKERS = 1
READ_SIZE = 1024 * 1024
OUTPUT_BLOCK = 1024 * 1024  # the most plaintext a restore holds at once
_PREFIX = struct.Struct(">8sHI")
_RECORD = struct.Struct(">I")
TAG_BYTES = 16


class ArchiveError(Exception):
    """The archive cannot be read as written: corrupt, truncated, tampered, or of a newer format."""


class IntegrityError(ArchiveError):
    """Authentication failed; the message names the archive and the chunk index."""


class Sink(Protocol):
    def write(self, data: bytes) -> object: ...


@dataclass(frozen=True)
class ArchiveHeader:
    archive_id: str
    nonce_prefix: bytes
    chunk_size: int
    wrapped_key: WrappedKey
    compression: str = "zstd"
    cipher: str = "AES-256-GCM"

    def encode(self) -> bytes:
        body = json.dumps({
            "archive_id": self.archive_id, "nonce_prefix": self.nonce_prefix.hex(), "chunk_size": self.chunk_size,
            "compression": self.compression, "cipher": self.cipher, "wrapped_key": self.wrapped_key.to_dict(),
        }, sort_keys=True, separators=(",", ":")).encode()
        return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body)) + body

    @classmethod
    def decode_from(cls, stream: BinaryIO, *, where: str) -> tuple[ArchiveHeader, bytes]:
        prefix = _read_exactly(stream, _PREFIX.size)
        if len(prefix) < _PREFIX.size:
            raise ArchiveError(f"{where}: truncated before the end of the header ({len(prefix)} bytes)")
        magic, version, length = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ArchiveError(f"{where}: not a Continuity archive (magic {magic!r}, expected {MAGIC!r})")
        if version > FORMAT_VERSION:
            raise ArchiveError(f"{where}: archive format version {version} is newer than this reader "
                               f"(supports up to {FORMAT_VERSION}); upgrade continuity to read it")
        if version < 1 or length > 64 * 1024:
            raise ArchiveError(f"{where}: corrupt header (version {version}, length {length})")
        body = _read_exactly(stream, length)
        if len(body) < length:
            raise ArchiveError(f"{where}: truncated inside the header")
        try:
            data = json.loads(body)
            header = cls(archive_id=data["archive_id"], nonce_prefix=bytes.fromhex(data["nonce_prefix"]),
                         chunk_size=int(data["chunk_size"]), wrapped_key=WrappedKey.from_dict(data["wrapped_key"]),
                         compression=data["compression"], cipher=data["cipher"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(f"{where}: corrupt header: {exc}") from None
        if header.compression not in COMPRESSIONS or header.cipher != "AES-256-GCM" or len(header.nonce_prefix) != 8:
            raise ArchiveError(f"{where}: unsupported header ({header.compression}, {header.cipher})")
        if not 0 < header.chunk_size <= MAX_CHUNK_SIZE:
            raise ArchiveError(f"{where}: corrupt header (chunk size {header.chunk_size})")
        return header, prefix + body


def _aad(archive_id: str, header_digest: bytes, index: int, final: bool) -> bytes:
    return archive_id.encode() + b"\0" + header_digest + struct.pack(">QB", index, 1 if final else 0)


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    remaining = size
    while remaining > 0:
        block = stream.read(remaining)
        if not block:
            break
        parts.append(block)
        remaining -= len(block)
    return b"".join(parts)


@dataclass
class WriteResult:
    plaintext_bytes: int
    compressed_bytes: int
    stored_bytes: int
    plaintext_sha256: str
    stored_sha256: str
    chunks: int


class _HashingSink:
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
        self.sink.write(data)


def write_archive(
    source: BinaryIO,
    sink: Sink,
    *,
    archive_id: str,
    data_key: bytes,
    wrapped_key: WrappedKey,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression: str = "zstd",
    progress: Callable[[int], None] | None = None,
) -> WriteResult:
    """Read `source` once to its end; write the archive to `sink`. Memory: about two chunks."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk size must be between 1 and {MAX_CHUNK_SIZE} bytes, got {chunk_size}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    header = ArchiveHeader(archive_id=archive_id, nonce_prefix=secrets.token_bytes(8),
                           chunk_size=chunk_size, wrapped_key=wrapped_key, compression=compression)
    encoded = header.encode()
    header_digest = hashlib.sha256(encoded).digest()
    out = _HashingSink(sink)
    out.write(encoded)
    aead = AESGCM(data_key)
    plain_sha = hashlib.sha256()
    plain_size = 0
    compressed = 0
    index = 0
    pending: bytes | None = None  # held back one chunk: only the last one is sealed as final

    def seal(chunk: bytes, final: bool) -> None:
        nonlocal index
        sealed = aead.encrypt(_nonce(header.nonce_prefix, index), chunk, _aad(archive_id, header_digest, index, final))
        out.write(_RECORD.pack(len(sealed)) + sealed)
        index += 1

    def emit(chunks: Iterator[bytes]) -> None:
        nonlocal pending, compressed
        for chunk in chunks:
            compressed += len(chunk)
            if pending is not None:
                seal(pending, final=False)
            pending = chunk

    chunker = (zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=False, threads=ZSTD_WORKERS).chunker(
        size=-1, chunk_size=chunk_size) if compression == "zstd" else _Chunker(chunk_size))
    while True:
        block = source.read(READ_SIZE)
        if not block:
            break
        plain_sha.update(block)
        plain_size += len(block)
        emit(chunker.compress(block))
        if progress:
            progress(plain_size)
    emit(chunker.finish())
    seal(pending if pending is not None else b"", final=True)
    return WriteResult(plaintext_bytes=plain_size, compressed_bytes=compressed, stored_bytes=out.size,
                       plaintext_sha256=plain_sha.hexdigest(), stored_sha256=out.sha.hexdigest(), chunks=index)


class _Chunker:
    """zstandard's chunker interface without compression: fixed-size pieces of the input."""

    def __init__(self, chunk_size: int) -> None:
        self.chunk_size = chunk_size
        self.buffer = bytearray()

    def compress(self, data: bytes) -> Iterator[bytes]:
        self.buffer += data
        while len(self.buffer) >= self.chunk_size:
            yield bytes(self.buffer[:self.chunk_size])
            del self.buffer[:self.chunk_size]

    def finish(self) -> Iterator[bytes]:
        if self.buffer:
            yield bytes(self.buffer)
            self.buffer.clear()


def read_header(stream: BinaryIO, *, where: str) -> ArchiveHeader:
    return ArchiveHeader.decode_from(stream, where=where)[0]


@dataclass
class ReadResult:
    plaintext_bytes: int
    plaintext_sha256: str
    stored_bytes: int
    stored_sha256: str
    chunks: int


def read_archive(
    stream: BinaryIO,
    sink: Sink | None,
    *,
    data_key_for: Callable[[ArchiveHeader], bytes],
    where: str,
    expected_archive_id: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReadResult:
    """Authenticate and decrypt every chunk, decompress, and write the plaintext to `sink`.

    `data_key_for(header)` returns the data key (the manifest's wrapping is the authority after a
    key rotation; the header's is the fallback). With `sink=None` nothing is written: a deep verify.
    """
    stored = hashlib.sha256()
    header, encoded = ArchiveHeader.decode_from(stream, where=where)
    stored.update(encoded)
    stored_size = len(encoded)
    name = f"{where} (archive {header.archive_id})"
    if expected_archive_id is not None and header.archive_id != expected_archive_id:
        raise IntegrityError(f"{where}: holds archive {header.archive_id}, expected {expected_archive_id}")
    header_digest = hashlib.sha256(encoded).digest()
    aead = AESGCM(data_key_for(header))
    # Output is taken OUTPUT_BLOCK bytes at a time: one authenticated chunk of zstd can expand
    # ~30,000-fold (zeros), so decompressing a chunk in one call is unbounded memory.
    decompressor = ZstdDecompressor() if header.compression == "zstd" else None
    plain_sha = hashlib.sha256()
    plain_size = 0

    def deliver(data: bytes) -> None:
        nonlocal plain_size
        if data:
            plain_sha.update(data)
            plain_size += len(data)
            if sink is not None:
                sink.write(data)
            if progress:
                progress(plain_size)

    index = 0
    max_record = header.chunk_size + TAG_BYTES
    record = _read_record(stream, name=name, index=index, max_record=max_record)
    while True:
        if record is None:
            raise IntegrityError(f"{name}: truncated: chunk {index} is missing (the final chunk was never seen)")
        length_bytes, sealed = record
        stored.update(length_bytes + sealed)
        stored_size += len(length_bytes) + len(sealed)
        following = _read_record(stream, name=name, index=index + 1, max_record=max_record)
        final = following is None
        try:
            chunk = aead.decrypt(_nonce(header.nonce_prefix, index), sealed, _aad(header.archive_id, header_digest, index, final))
        except InvalidTag:
            if final:
                raise IntegrityError(f"{name}: chunk {index} failed authentication as the last chunk: "
                                     f"the archive is truncated after chunk {index}, or chunk {index} is corrupt") from None
            raise IntegrityError(f"{name}: chunk {index} failed authentication (corrupt, tampered, reordered, "
                                 f"duplicated or from another archive)") from None
        if decompressor is None:
            deliver(chunk)
        elif decompressor.eof:
            if chunk:
                raise IntegrityError(f"{name}: chunk {index} carries data after the end of the compressed stream")
        else:
            pending = chunk
            while True:
                deliver(decompressor.decompress(pending, max_length=OUTPUT_BLOCK))
                pending = b""
                if decompressor.eof or decompressor.needs_input:
                    break
        index += 1
        if final:
            break
        record = following
    if decompressor is not None and not decompressor.eof:
        raise IntegrityError(f"{name}: the compressed stream ends early after {index} authenticated chunks")
    if decompressor is not None and decompressor.unused_data:
        raise IntegrityError(f"{name}: {len(decompressor.unused_data)} bytes follow the end of the compressed stream")
    return ReadResult(plaintext_bytes=plain_size, plaintext_sha256=plain_sha.hexdigest(),
                      stored_bytes=stored_size, stored_sha256=stored.hexdigest(), chunks=index)


def _read_record(stream: BinaryIO, *, name: str, index: int, max_record: int) -> tuple[bytes, bytes] | None:
    length_bytes = _read_exactly(stream, _RECORD.size)
    if not length_bytes:
        return None
    if len(length_bytes) < _RECORD.size:
        raise IntegrityError(f"{name}: truncated inside the length of chunk {index}")
    (length,) = _RECORD.unpack(length_bytes)
    if not TAG_BYTES <= length <= max_record:
        raise IntegrityError(f"{name}: chunk {index} has an impossible length {length} (corrupt or tampered)")
    sealed = _read_exactly(stream, length)
    if len(sealed) < length:
        raise IntegrityError(f"{name}: truncated inside chunk {index} ({len(sealed)} of {length} bytes)")
    return length_bytes, sealed
