"""Configuration backups: Airflow connections and variables, the policy, infrastructure state files.

Everything goes into one tar inside an encrypted archive; secrets (connection passwords, the
keyring itself) exist only inside it, never in logs, XCom or the manifest.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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
    environ = os.environ if environ is None else environ
    bundle = ConfigBundle()
    bundle.add("policy.yaml", policy_path.read_bytes())
    connections = {**_airflow_export(airflow, "connections", bundle.notes.append),
                   **_from_environment("AIRFLOW_CONN_", environ)}
    variables = {**_airflow_export(airflow, "variables", bundle.notes.append),
                 **_from_environment("AIRFLOW_VAR_", environ)}
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
