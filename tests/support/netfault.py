"""A TCP proxy on loopback that cuts every connection after the upstream has sent `limit` bytes (a
real network failure in the middle of a response), or after the client has sent `request_limit`
bytes (in the middle of an upload), for the paths that must survive one."""

from __future__ import annotations

import socket
import threading

from continuity.postgres.cluster import free_port


def shut(*ends: socket.socket) -> None:
    """Both directions down and closed, whatever state each end is in."""
    for end in ends:
        try:
            end.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        end.close()


class CuttingProxy:
    def __init__(self, *, upstream_port: int, limit: int | None = None, request_limit: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.limit = limit
        self.request_limit = request_limit
        self.port = free_port()
        self.cuts = 0
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, self.request_limit), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, self.limit), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            shut(source, sink)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()


class Forwarder:
    """A TCP forwarder on loopback standing for the network between two regions: `cut()` drops every
    connection through it and refuses new ones (a partition), `heal()` lets them through again."""

    def __init__(self, *, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._cut = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._close(source, sink)

    def _close(self, *ends: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(ends)
        shut(*ends)

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            ends = list(self._open)
        self._close(*ends)

    def heal(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
