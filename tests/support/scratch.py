"""Scratch PostgreSQL clusters for restore checks in tests (built from base backups by hand, apart from the restore engine)."""

from __future__ import annotations

import io
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from continuity.postgres.cluster import LocalCluster, ServiceUser, find_bindir, free_port


def _cluster(root: Path, name: str) -> LocalCluster:
    user = ServiceUser.detect()
    socket_dir = user.make_dir(root / "run", 0o700)
    return LocalCluster(name=name, data_dir=root / "data", port=free_port(), socket_dir=socket_dir,
                        log_file=root / f"{name}.log", user=user, bindir=find_bindir())


def _scratch_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    ServiceUser.detect().make_dir(root, 0o755)
    return root


@contextmanager
def empty_cluster(settings: dict[str, str] | None = None) -> Iterator[LocalCluster]:
    """A fresh cluster on a private socket only; `settings` (name: value) go into its postgresql.conf."""
    root = _scratch_root("continuity-sandbox-scratch-")
    cluster = _cluster(root, "scratch")
    cluster.initdb()
    with open(cluster.data_dir / "postgresql.conf", "a") as conf:
        conf.write(f"\nport = {cluster.port}\nunix_socket_directories = '{cluster.socket_dir}'\n"
                   f"listen_addresses = ''\n")
        conf.writelines(f"{name} = '{value}'\n" for name, value in (settings or {}).items())
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(mode="immediate")
        _remove(root)


@contextmanager
def cluster_from_base_backup(tar_bytes: bytes) -> Iterator[tuple[LocalCluster, Callable[[], None]]]:
    """Unpack a base backup tar; yields the (not yet started) cluster, untouched so it can be verified,
    and `make_private()` to call before starting it."""
    root = _scratch_root("continuity-sandbox-physical-")
    cluster = _cluster(root, "restored")
    user = cluster.user
    user.make_dir(cluster.data_dir, 0o700)
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as archive:
        archive.extractall(cluster.data_dir, filter="fully_trusted")
    import os

    for path in [cluster.data_dir, *cluster.data_dir.rglob("*")]:
        if user.is_other:
            os.chown(path, user.uid, user.gid)

    def make_private() -> None:
        """Run as a private, non-archiving server: never touch the sandbox's ports or WAL spool."""
        user.write_file(cluster.data_dir / "node.conf",
                        f"port = {cluster.port}\nunix_socket_directories = '{cluster.socket_dir}'\nlisten_addresses = ''\n"
                        f"archive_mode = off\nsynchronous_standby_names = ''\nprimary_conninfo = ''\n")

    try:
        yield cluster, make_private
    finally:
        cluster.stop(mode="immediate")
        _remove(root)


def _remove(root: Path) -> None:
    import shutil

    shutil.rmtree(root, ignore_errors=True)
