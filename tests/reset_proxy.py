"""A loopback TCP proxy that can drop requests: the connection reset a client sees when a
server closes a pooled connection just as a request goes out.

Everything is forwarded to the real server, except the next ``drop`` requests: each is read,
not forwarded, and its connection closed with a TCP reset, so the client's read fails with
"connection reset by peer" (``httpx.ReadError``) and the server never sees the request.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from urllib.parse import urlsplit, urlunsplit


class ResettingProxy:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._upstream = (parts.hostname, parts.port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        port = self._listener.getsockname()[1]
        self.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{port}"))
        self._lock = threading.Lock()
        self._to_drop = 0
        self.dropped = 0
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self, requests: int) -> None:
        """Reset the connection of each of the next ``requests`` requests, unforwarded."""
        with self._lock:
            self._to_drop += requests

    def _take_drop(self) -> bool:
        with self._lock:
            if self._to_drop == 0:
                return False
            self._to_drop -= 1
            self.dropped += 1
            return True

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            threading.Thread(
                target=self._forward, args=(client, upstream, True), daemon=True
            ).start()
            threading.Thread(
                target=self._forward, args=(upstream, client, False), daemon=True
            ).start()

    def _forward(self, source: socket.socket, sink: socket.socket, requests: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if requests and self._take_drop():
                    # SO_LINGER 0: close() sends a reset instead of a FIN
                    source.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    source.close()
                    sink.close()
                    return
                sink.sendall(chunk)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> ResettingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
