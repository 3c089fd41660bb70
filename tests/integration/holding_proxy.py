"""A TCP proxy between S3 clients and the real store that can hold a request mid-flight.

Fault tests need "the store fails while a version is being uploaded". A tiny model's upload
is over in milliseconds, so stopping the store when a log line appears would race it. This
proxy forwards bytes both ways, and the first time a client sends a request line starting
with `hold_on` (for example b"PUT /models/faults/m/5/", a file of version 5), it stops
forwarding that connection and every later one: the upload is then certainly under way and
frozen there until the test has done its damage (stopped the store, signalled the trainer)
and calls `release()`. Nothing about S3 is simulated: every byte that passes goes to the
real store.
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tools.seaweed import free_port

CHUNK = 1 << 16


class HoldingProxy:
    def __init__(self, upstream_port: int, hold_on: bytes, host: str = "127.0.0.1"):
        self.upstream = (host, upstream_port)
        self.hold_on = hold_on
        self.port = free_port(host)
        self.held = threading.Event()  # set once a request matched
        self._released = threading.Event()
        self._listener = socket.create_server((host, self.port))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.upstream[0]}:{self.port}"

    def release(self) -> None:
        """Forward again: what was held goes on to the store (or finds it gone)."""
        self._released.set()

    def close(self) -> None:
        self._released.set()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream)
        except OSError:  # the store is down: the client sees the connection reset
            client.close()
            return
        self._sockets.append(server)
        threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()
        self._pipe(client, server, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(CHUNK):
                if from_client and not self.held.is_set() and self.hold_on in data:
                    self.held.set()
                if self.held.is_set():
                    self._released.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
