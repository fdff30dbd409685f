"""`continuity sandbox down` stops exactly what `up` started, is safe twice, and `up` restarts with the data."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg

from continuity.postgres.cluster import pid_alive
from continuity_lab.sandbox import Sandbox


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and pid_alive(int(proc.name)):
            found.append(int(proc.name))
    return found


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "continuity.cli", "sandbox", *args],
                          capture_output=True, text=True, env={**os.environ})


def test_down_leaves_nothing_behind_and_up_restarts_with_the_data() -> None:
    root = Path(tempfile.mkdtemp(prefix="continuity-sandbox-lifecycle-"))
    root.chmod(0o755)
    sandbox = Sandbox(root=root)
    try:
        sandbox.up(scale=0.05)
        pids = [sandbox.cluster(n).postmaster_pid() for n in sandbox.node_names]
        pids.append(int((sandbox.pgbouncer_dir / "pgbouncer.pid").read_text()))
        pids.append(sandbox.state["s3"]["pid"])
        assert sandbox.wal_pusher_running, "`up` pushes WAL as it closes"
        pids.append(sandbox.state["wal_pusher"]["pid"])
        assert all(pid_alive(pid) for pid in pids)
        with psycopg.connect(sandbox.app_conninfo()) as conn:
            users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        # An instance of the application no state file records (as a killed restore test's verification
        # instance would be): `down` finds it by the gateway it uses.
        region = next(iter(sandbox.policy.application.regions))
        stray = subprocess.Popen([sys.executable, "-m", "continuity_lab.sampleapp", "serve", "--port", "0"],
                                 env=sandbox._application_environment(region, "stray"), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        pids.append(stray.pid)

        down = _cli("down", "--root", str(root))
        assert down.returncode == 0, down.stderr
        assert "postgres primary" in down.stdout and "pgbouncer" in down.stdout and "s3 endpoint" in down.stdout
        assert "wal pusher" in down.stdout and "1 unrecorded application instance(s)" in down.stdout
        stray.wait(timeout=10)
        assert not [pid for pid in pids if pid_alive(pid)]
        assert _processes_mentioning(str(root)) == []

        again = _cli("down", "--root", str(root))
        assert again.returncode == 0 and "nothing was running" in again.stdout

        restarted = Sandbox(root=root)
        restarted.up()
        restarted.wait_streaming()
        with psycopg.connect(restarted.app_conninfo()) as conn:
            assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == users
        assert restarted.key_file.read_text() == sandbox.key_file.read_text(), "the key survives a restart"
    finally:
        Sandbox(root=root).down(purge=True)
    assert not root.exists()
    assert _processes_mentioning(str(root)) == []


def test_status_of_a_missing_sandbox_is_a_clear_error(tmp_path: Path) -> None:
    result = _cli("status", "--root", str(tmp_path / "none"))
    assert result.returncode == 1
    assert "no sandbox at" in result.stderr and "HINT: run `continuity sandbox up` first" in result.stderr


def test_run_whose_metadata_database_cannot_start_says_so_and_leaves_nothing_running() -> None:
    """The metadata database is made ready beside the sandbox's start: when it fails, `continuity run` waits for
    the sandbox, stops it and names the failure (exit 1), and nothing of the root keeps running."""
    root = Path(tempfile.mkdtemp(prefix="continuity-sandbox-run-fault-"))
    root.chmod(0o755)
    # A metadata data directory PostgreSQL refuses to start on: a configuration file it cannot parse.
    plane = root / "control-plane"
    (plane / "metadata").mkdir(parents=True)
    (plane / "metadata" / "PG_VERSION").write_text("15\n")
    (plane / "metadata" / "postgresql.conf").write_text("this is not a setting\n")
    (plane / "state.json").write_text('{"metadata": {"port": 1}}')
    if os.geteuid() == 0:  # the server runs as the postgres OS user (it refuses root)
        os.chown(plane / "metadata", *_postgres_ids())
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        done = subprocess.run([sys.executable, "-m", "continuity.cli", "run", "--root", str(root), "--scale", "0.05",
                               "--port", "1"], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
        assert "first backups taken" in done.stdout, "the sandbox started beside the failing control plane"
        assert "the control plane did not start" in done.stderr and "HINT" in done.stderr, done.stderr[-2000:]
        assert "the sandbox was stopped" in done.stderr
        assert "postgresql.log" in done.stderr, "the error names the database's log, where PostgreSQL says why"
        assert _processes_mentioning(str(root)) == []
    finally:
        _cli("down", "--purge", "--root", str(root))


def _postgres_ids() -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam("postgres")
    return entry.pw_uid, entry.pw_gid
