"""The emergency CLI with Airflow not running: list/show/verify/restore/keys and an exit code per failure class."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from continuity.cli import EXIT_INTEGRITY, EXIT_MISSING_KEY, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from continuity.storage.keys import Keyring
from continuity.postgres.cluster import free_port
from continuity.policy.project import default_policy_path


@pytest.fixture
def cli(sandbox, tmp_path: Path):
    """Runs `continuity` against the sandbox's S3 endpoint, under a prefix of its own and a keyring copy."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(default_policy_path().read_text().replace("prefix: continuity/", f"prefix: cli-{uuid.uuid4().hex[:8]}/"))
    key_file = tmp_path / "keyring.json"
    shutil.copyfile(sandbox.key_file, key_file)

    def run(*args: str, root: Path | None = None, key: Path | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "continuity.cli", "--policy", str(policy), *args,
                   "--root", str(root or sandbox.root), "--key-file", str(key or key_file)]
        return subprocess.run(command, capture_output=True, input=stdin, env={**os.environ})

    run.key_file = key_file  # type: ignore[attr-defined]
    run.policy = policy  # type: ignore[attr-defined]
    return run


def _create(cli, path: Path) -> str:
    result = cli("backups", "create", "--from", str(path), "--label", "before migration")
    assert result.returncode == EXIT_OK, result.stderr.decode()
    return result.stdout.decode().strip()


def test_create_list_show_verify_restore(cli, tmp_path: Path) -> None:
    source = tmp_path / "dump.bin"
    source.write_bytes(os.urandom(300_000) + b"row\n" * 100_000)
    backup_id = _create(cli, source)

    listed = json.loads(cli("backups", "list", "--json").stdout)
    assert [b["backup_id"] for b in listed["backups"]] == [backup_id]
    assert listed["backups"][0]["locations"] == ["archive", "dr", "primary"]

    shown = cli("backups", "show", backup_id)
    document = json.loads(shown.stdout)
    assert document["label"] == "before migration" and document["plaintext_bytes"] == source.stat().st_size
    assert document["key"]["wrapped"] == "(wrapped data key)"

    verified = cli("backups", "verify", backup_id, "--deep", "--json")
    assert verified.returncode == EXIT_OK
    assert all(r["ok"] and r["depth"] == "deep" for r in json.loads(verified.stdout)["results"])
    after = json.loads(cli("backups", "show", backup_id, "--location", "dr").stdout)
    assert after["locations"]["dr"]["verify_depth"] == "deep"

    target = tmp_path / "restored.bin"
    restored = cli("restore", backup_id, "--to", str(target), "--location", "dr")
    assert restored.returncode == EXIT_OK, restored.stderr.decode()
    assert target.read_bytes() == source.read_bytes()
    refused = cli("restore", backup_id, "--to", str(target))
    assert refused.returncode == EXIT_USAGE and b"refusing to overwrite" in refused.stderr

    streamed = cli("restore", backup_id, "--to", "-")
    assert streamed.returncode == EXIT_OK and streamed.stdout == source.read_bytes()


def test_stdin_backup(cli) -> None:
    created = cli("backups", "create", "--from", "-", "--kind", "config", stdin=b"key: value\n")
    assert created.returncode == EXIT_OK
    assert cli("restore", created.stdout.decode().strip(), "--to", "-").stdout == b"key: value\n"


def test_corrupt_copy_exit_code_and_restore_from_another_location(cli, sandbox, tmp_path: Path) -> None:
    source = tmp_path / "data.bin"
    source.write_bytes(os.urandom(100_000))
    backup_id = _create(cli, source)
    shown = json.loads(cli("backups", "show", backup_id).stdout)
    prefix = [line for line in Path(cli.policy).read_text().splitlines() if "prefix: cli-" in line][0].split()[-1]
    client = sandbox.s3_client("us-east-1")
    key = prefix + shown["locations"]["primary"]["key"]
    blob = bytearray(client.get_object(Bucket="continuity-backups-us-east-1", Key=key)["Body"].read())
    blob[5000] ^= 0xFF
    client.put_object(Bucket="continuity-backups-us-east-1", Key=key, Body=bytes(blob))

    verified = cli("backups", "verify", backup_id, "--deep")
    assert verified.returncode == EXIT_INTEGRITY
    assert b"FAILED primary" in verified.stdout and b"chunk 0 failed authentication" in verified.stdout
    assert b"ok     dr" in verified.stdout

    target = tmp_path / "out.bin"
    restored = cli("restore", backup_id, "--to", str(target), "--location", "primary")
    assert restored.returncode == EXIT_OK
    assert b"copy in location primary failed" in restored.stderr
    assert target.read_bytes() == source.read_bytes()


def test_missing_key_exit_code_names_the_kek(cli, tmp_path: Path) -> None:
    source = tmp_path / "s.bin"
    source.write_bytes(b"secret")
    backup_id = _create(cli, source)
    needed = json.loads(cli("backups", "show", backup_id).stdout)["key"]["kek_id"]
    other = tmp_path / "other.json"
    Keyring(keys={"someone-else": os.urandom(32)}, active="someone-else").save(other)
    result = cli("backups", "show", backup_id, key=other)
    assert result.returncode == EXIT_MISSING_KEY
    assert f"needs KEK '{needed}'".encode() in result.stderr and b"HINT:" in result.stderr


def test_storage_unreachable_exit_code(cli, sandbox, tmp_path: Path) -> None:
    dead = tmp_path / "dead-sandbox"
    dead.mkdir()
    state = json.loads(sandbox.state_file.read_text())
    state["s3"]["port"] = free_port()  # nothing listens there
    for gateway in state.get("gateways", {}).values():  # every region's storage is reached through its gateway
        gateway["port"] = free_port()
    (dead / "state.json").write_text(json.dumps(state))
    result = cli("backups", "list", root=dead)
    assert result.returncode == EXIT_UNREACHABLE, result.stderr
    assert b"HINT: is the storage endpoint reachable" in result.stderr


def test_bad_usage_exit_code(cli) -> None:
    assert cli("backups", "verify").returncode == EXIT_USAGE
    missing = cli("backups", "create", "--from", "/no/such/file")
    assert missing.returncode == EXIT_USAGE and b"--from /no/such/file: not a readable file" in missing.stderr


def test_keys_rotate_dry_run_apply_and_retire(cli, tmp_path: Path) -> None:
    sources = []
    for i in range(2):
        path = tmp_path / f"b{i}.bin"
        path.write_bytes(os.urandom(20_000))
        sources.append((_create(cli, path), path))
    old = Keyring.from_file(cli.key_file).active

    assert cli("keys", "new", "--id", "kek-rotated").returncode == EXIT_OK
    blocked = cli("keys", "retire", old, "--apply")
    assert blocked.returncode == 1 and b"cannot be retired: 6 kept backup copies still need it" in blocked.stderr

    dry = cli("keys", "rotate")
    assert b"6 manifest copies to re-wrap (dry run" in dry.stdout
    assert json.loads(cli("backups", "show", sources[0][0]).stdout)["key"]["kek_id"] == old
    applied = cli("keys", "rotate", "--apply")
    assert applied.returncode == EXIT_OK and b"6 manifest copies re-wrapped" in applied.stdout
    again = cli("keys", "rotate", "--apply")
    assert b"0 manifest copies re-wrapped" in again.stdout, "resumable: a rerun has nothing left to do"

    assert cli("keys", "retire", old, "--apply").returncode == EXIT_OK
    assert list(Keyring.from_file(cli.key_file).keys) == ["kek-rotated"]
    for backup_id, path in sources:
        out = cli("restore", backup_id, "--to", "-")
        assert out.returncode == EXIT_OK and out.stdout == path.read_bytes()
