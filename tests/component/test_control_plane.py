"""Airflow's metadata database of `continuity run`: a PostgreSQL cluster of the control plane's own, made once
with a generated password kept in 0600 files (never on a command line), found by another terminal through
`continuity sandbox env`, stopped by `down`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from continuity_lab.controlplane import METADATA_DATABASE, METADATA_ROLE, ControlPlane
from continuity.postgres.cluster import port_is_free


@pytest.fixture()
def plane() -> Iterator[ControlPlane]:
    root = Path(tempfile.mkdtemp(prefix="continuity-control-plane-"))
    root.chmod(0o755)
    plane = ControlPlane(root=root)
    try:
        yield plane
    finally:
        plane.down()
        shutil.rmtree(root, ignore_errors=True)


def test_metadata_database_is_made_once_private_and_stopped_by_down(plane: ControlPlane) -> None:
    env = plane.up_metadata()
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    password = json.loads(plane.secrets_file.read_text())["metadata"]
    assert url == (f"postgresql+psycopg2://{METADATA_ROLE}:{password}@127.0.0.1:{plane.metadata_port()}/"
                   f"{METADATA_DATABASE}")
    for private in (plane.secrets_file, plane.environment_file):
        assert stat.S_IMODE(private.stat().st_mode) == 0o600, private
    # What another terminal sources: the same URL, as a shell assignment.
    sourced = subprocess.run(["bash", "-c", f"set -a; . {plane.environment_file}; "
                              "printf %s \"$AIRFLOW__DATABASE__SQL_ALCHEMY_CONN\""],
                             capture_output=True, text=True, check=True).stdout
    assert sourced == url
    with psycopg.connect(host="127.0.0.1", port=plane.metadata_port(), dbname=METADATA_DATABASE,
                         user=METADATA_ROLE, password=password) as db:
        assert db.execute("SELECT current_user, current_database()").fetchone() == (METADATA_ROLE, METADATA_DATABASE)
        db.execute("CREATE TABLE kept (n int)")
        db.execute("INSERT INTO kept VALUES (42)")
    # The password never appears on a command line (ps shows those to every user of the machine).
    for process in psutil.process_iter(["cmdline"]):
        assert password not in " ".join(process.info["cmdline"] or []), process.info["cmdline"]

    assert "metadata database" in plane.down()
    assert port_is_free(plane.metadata_port())
    # A second start finds the cluster, the role and the password it had, and the data in it.
    assert plane.up_metadata()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == url
    with psycopg.connect(host="127.0.0.1", port=plane.metadata_port(), dbname=METADATA_DATABASE,
                         user=METADATA_ROLE, password=password) as db:
        assert db.execute("SELECT n FROM kept").fetchone() == (42,)
    # Its port taken by another process while it was down: it moves to a free one, with its data.
    plane.down()
    old_port = plane.metadata_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        # SO_REUSEADDR: the test's own closed connections may leave the port in TIME_WAIT, which refuses a plain
        # bind (seen in CI); listening on it still takes it from PostgreSQL.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", old_port))
        squatter.listen()
        url = plane.up_metadata()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert plane.metadata_port() != old_port and f":{plane.metadata_port()}/" in url
    with psycopg.connect(host="127.0.0.1", port=plane.metadata_port(), dbname=METADATA_DATABASE,
                         user=METADATA_ROLE, password=password) as db:
        assert db.execute("SELECT n FROM kept").fetchone() == (42,)
    assert plane.down() == ["metadata database"]
    assert plane.down() == []  # safe twice


def test_sandbox_env_sources_the_metadata_database_when_a_run_made_one(plane: ControlPlane) -> None:
    from continuity_lab.sandbox import Sandbox

    script = Sandbox(root=plane.directory.parent).env_script()
    assert str(plane.environment_file) in script
    # Before any run made one, sourcing the script leaves the setting alone (Airflow's default).
    shell = ("set -a; . /dev/stdin; set +a; printf %s \"${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN-unset}\"")
    lines = [line for line in script.splitlines() if "connections.env" not in line]  # no sandbox was brought up
    before = subprocess.run(["bash", "-c", shell], input="\n".join(lines), capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__DATABASE")})
    assert before.stdout == "unset", before.stderr
    url = plane.up_metadata()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    after = subprocess.run(["bash", "-c", shell], input="\n".join(lines), capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__DATABASE")})
    assert after.stdout == url, after.stderr
