"""A real client's write load for the benchmarks: pgbench through the sandbox's PgBouncer."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from continuity.postgres.cluster import find_tool

UPDATE_SCRIPT = "\\set id random(1, 1000)\nUPDATE detections SET confidence = confidence WHERE id = :id;\n"


def start_pgbench(conninfo: str, workdir: Path, *, seconds: int, clients: int = 4,
                  progress: bool = False) -> subprocess.Popen[str]:
    """pgbench `-M simple` (PgBouncer's transaction pooling takes no prepared statements), an UPDATE per
    transaction, for `seconds`; the password by environment, never on the command line."""
    script = workdir / "pgbench-update.sql"
    script.write_text(UPDATE_SCRIPT)
    info = conninfo_to_dict(conninfo)
    dsn = f"host={info['host']} port={info['port']} user={info['user']} dbname={info['dbname']}"
    argv = [find_tool("pgbench"), "-M", "simple", "-n", "-c", str(clients), "-j", "1", "-T", str(seconds),
            *(["--progress", "1"] if progress else []), "-f", str(script), dsn]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PGPASSWORD": str(info["password"])})
