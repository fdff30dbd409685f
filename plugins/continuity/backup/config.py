"""Configuration backups: Airflow connections and variables, the policy, infrastructure state files.

Everything goes into one tar inside an encrypted archive; secrets (connection passwords, the
keyring itself) exist only inside it, never in logs, XCom or the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from continuity.policy.project import TOPOLOGY_VARIABLE
from continuity.storage.keys import KEYRING_CONN_ID


@dataclass
class ConfigBundle:
    files: dict[str, bytes] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, data: bytes) -> None:
        self.files[name] = data

    def tar(self) -> bytes:
        """Config is small (kilobytes); the tar is built in memory with a checksum list inside."""
        index = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(self.files.items()))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for name, data in sorted({**self.files, "SHA256SUMS": index.encode()}.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = int(time.time())
                info.mode = 0o600
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


def _from_environment(prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in environ.items():
        if key.startswith(prefix):
            name = key[len(prefix):].lower()
            try:
                found[name] = json.loads(value)
            except ValueError:
                found[name] = value
    return found


def _airflow_export(airflow: str | None, what: str, note: Callable[[str], None]) -> dict[str, Any]:
    """`airflow connections|variables export` (what the metadata DB holds), when the CLI can reach it."""
    if not airflow:
        return {}
    try:
        result = subprocess.run([airflow, what, "export", "-", "--file-format", "json"] if what == "connections"
                                else [airflow, what, "export", "-"], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        note(f"airflow {what} export did not run: {exc}")
        return {}
    if result.returncode != 0:
        note(f"airflow {what} export failed (exit {result.returncode}); only environment-defined {what} are included")
        return {}
    text = result.stdout[result.stdout.find("{"):] if "{" in result.stdout else "{}"
    try:
        return json.loads(text)
    except ValueError:
        note(f"airflow {what} export printed something that is not JSON; skipped")
        return {}


def collect(*, policy_path: Path, state_files: list[str], airflow: str | None,
            environ: Mapping[str, str] | None = None) -> ConfigBundle:
    """The deployment's configuration, except what must not be inside its own backup: the keyring's connection
    (the keyring protects the backups; docs/runbooks/rebuild-airflow.md says where it lives instead) and the
    recorded topology (a fact about the cluster, stale once restored: re-read from storage at a rebuild)."""
    environ = os.environ if environ is None else environ
    bundle = ConfigBundle()
    bundle.add("policy.yaml", policy_path.read_bytes())
    connections = {**_airflow_export(airflow, "connections", bundle.notes.append),
                   **_from_environment("AIRFLOW_CONN_", environ)}
    variables = {**_airflow_export(airflow, "variables", bundle.notes.append),
                 **_from_environment("AIRFLOW_VAR_", environ)}
    if connections.pop(KEYRING_CONN_ID, None) is not None:
        bundle.notes.append(f"connection {KEYRING_CONN_ID} left out: the keyring is kept outside the backups it "
                            f"protects")
    if variables.pop(TOPOLOGY_VARIABLE, None) is not None:
        bundle.notes.append(f"variable {TOPOLOGY_VARIABLE} left out: the topology is re-read from storage at a "
                            f"rebuild")
    bundle.add("airflow/connections.json", json.dumps(connections, indent=2, sort_keys=True).encode())
    bundle.add("airflow/variables.json", json.dumps(variables, indent=2, sort_keys=True).encode())
    for state in state_files:
        path = Path(state)
        if path.is_file():
            bundle.add(f"infrastructure/{path.name}", path.read_bytes())
        else:
            bundle.notes.append(f"infrastructure state file {state} is missing")
    bundle.notes.append(f"{len(connections)} connections, {len(variables)} variables, {len(state_files)} state files")
    return bundle


# -- rebuilding Airflow from a configuration backup ------------------------------------------------
class ConfigRestoreError(RuntimeError):
    """A configuration backup that cannot be read as written, or an Airflow that would not take it."""


def read_bundle(data: bytes, *, where: str) -> ConfigBundle:
    """The bundle a config backup holds, every file checked against the SHA256SUMS written with it."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if not member.isfile() or member.name.startswith("/") or ".." in parts:
                    raise ConfigRestoreError(f"{where}: unexpected member {member.name!r} (only plain files under "
                                             f"the bundle's own directories are written)")
                extracted = archive.extractfile(member)
                files[member.name] = extracted.read() if extracted else b""
    except tarfile.TarError as exc:
        raise ConfigRestoreError(f"{where}: not a configuration bundle: {exc}") from None
    sums = files.pop("SHA256SUMS", None)
    if sums is None:
        raise ConfigRestoreError(f"{where}: the bundle has no SHA256SUMS")
    expected = {name: digest for digest, name in (line.split("  ", 1) for line in sums.decode().splitlines())}
    if set(expected) != set(files):
        raise ConfigRestoreError(f"{where}: files {sorted(set(expected) ^ set(files))} differ from SHA256SUMS")
    for name, data_ in files.items():
        if hashlib.sha256(data_).hexdigest() != expected[name]:
            raise ConfigRestoreError(f"{where}: {name} does not match its SHA-256 in SHA256SUMS")
    return ConfigBundle(files=files)


@dataclass
class RestoredAirflow:
    connections: list[str]
    variables: list[str]
    files: Path  # the policy and infrastructure state files, for the operator to put in place


def fernet_configured(environ: Mapping[str, str], airflow_home: Path) -> bool:
    """Whether the Airflow that `environ` and `airflow_home` configure encrypts connections (a Fernet key set by
    environment, command, secret or airflow.cfg)."""
    import configparser

    if any(environ.get(f"AIRFLOW__CORE__FERNET_KEY{suffix}") for suffix in ("", "_CMD", "_SECRET")):
        return True
    config = configparser.ConfigParser(interpolation=None)
    try:
        config.read(airflow_home / "airflow.cfg")
    except configparser.Error:
        return False
    return bool(config.get("core", "fernet_key", fallback="").strip())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(data)


def restore_into_airflow(bundle: ConfigBundle, *, airflow: str, airflow_home: Path, backup_id: str,
                         environ: Mapping[str, str], report: Callable[[str], None],
                         topology: str | None = None) -> RestoredAirflow:
    """Import the bundle's connections and variables into the Airflow that `airflow_home` (and `environ`'s
    AIRFLOW__ settings) configure, whose metadata database must be migrated; the other files go to
    <home>/continuity-config/<backup id>/. Secrets pass through files only this user can read, removed after."""
    where = f"config backup {backup_id}"
    try:
        connections = json.loads(bundle.files["airflow/connections.json"])
        variables = json.loads(bundle.files["airflow/variables.json"])
    except (KeyError, ValueError) as exc:
        raise ConfigRestoreError(f"{where}: no readable airflow/connections.json and variables.json ({exc})") from None
    if not fernet_configured(environ, airflow_home):
        raise ConfigRestoreError(
            f"the Airflow at {airflow_home} has no Fernet key: the {len(connections)} connections would be stored in "
            f"plain text in its database; nothing was imported. HINT: set AIRFLOW__CORE__FERNET_KEY (the old "
            f"Airflow's key, or a new one from `python -c 'from cryptography.fernet import Fernet; "
            f"print(Fernet.generate_key().decode())'`)")
    # Backups taken before these were left out still hold them: never restored (see `collect`).
    connections.pop(KEYRING_CONN_ID, None)
    if variables.pop(TOPOLOGY_VARIABLE, None) is not None:
        report(f"{where}: variable {TOPOLOGY_VARIABLE} not restored (stale in a backup; re-read from storage)")
    if topology is not None:  # the newest record dr_failover wrote, from storage (`topology`: its JSON text)
        variables[TOPOLOGY_VARIABLE] = topology
        report(f"{TOPOLOGY_VARIABLE} set from storage's current topology: primary "
               f"{json.loads(topology).get('primary')}")
    bundle = ConfigBundle(files={**bundle.files,
                                 "airflow/connections.json": json.dumps(connections, indent=2, sort_keys=True).encode(),
                                 "airflow/variables.json": json.dumps(variables, indent=2, sort_keys=True).encode()},
                          notes=bundle.notes)
    target = airflow_home / "continuity-config" / backup_id
    if target.exists():
        raise ConfigRestoreError(f"{target} exists: this backup was restored here before; HINT: move it away to "
                                 f"restore again")
    env = {**environ, "AIRFLOW_HOME": str(airflow_home)}
    private = Path(tempfile.mkdtemp(prefix=".continuity-import-", dir=airflow_home))  # 0700
    try:
        for what, path, argv in (
                ("connections", private / "connections.json", ["connections", "import", "--overwrite"]),
                ("variables", private / "variables.json", ["variables", "import", "--action-on-existing-key",
                                                           "overwrite"])):
            _write_private(path, bundle.files[f"airflow/{what}.json"])
            result = subprocess.run([airflow, *argv, str(path)], capture_output=True, text=True, env=env,
                                    timeout=300)
            if result.returncode != 0:
                tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
                raise ConfigRestoreError(f"{where}: `airflow {' '.join(argv)}` into {airflow_home} failed "
                                         f"(exit {result.returncode}): {tail[0]}; HINT: run `airflow db migrate` "
                                         f"with AIRFLOW_HOME={airflow_home} first")
            report(f"{where}: {len(connections) if what == 'connections' else len(variables)} {what} imported "
                   f"into {airflow_home}")
    finally:
        shutil.rmtree(private, ignore_errors=True)
    # Written beside, then renamed: a restore that fails half-way leaves no directory that looks complete.
    staging = target.with_name(f".{backup_id}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    for name, data in bundle.files.items():
        if not name.startswith("airflow/"):
            _write_private(staging / name, data)
    staging.mkdir(parents=True, exist_ok=True, mode=0o700)
    staging.rename(target)
    return RestoredAirflow(connections=sorted(connections), variables=sorted(variables), files=target)
