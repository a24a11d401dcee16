"""coorch.net: free_port and wait_until_healthy against a real http.server on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coorch.net import free_port, wait_until_healthy


def _handler(status: int) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def _serve(port: int, status: int = 200, delay_s: float = 0.0) -> Iterator[None]:
    """An http.server answering ``status`` on ``port``, listening after ``delay_s`` (at once:
    before the block starts); stopped on exit."""
    box: dict[str, ThreadingHTTPServer] = {}
    stop, bound = threading.Event(), threading.Event()

    def run() -> None:
        if stop.wait(delay_s):
            return
        server = ThreadingHTTPServer(("127.0.0.1", port), _handler(status))
        box["server"] = server
        bound.set()
        server.serve_forever(poll_interval=0.05)
        server.server_close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    if delay_s == 0:
        assert bound.wait(5)
    try:
        yield
    finally:
        stop.set()
        while thread.is_alive() and not bound.wait(0.01):  # still waiting out its delay
            pass
        if bound.is_set():
            box["server"].shutdown()
        thread.join(5)
        assert not thread.is_alive()


def test_free_port_is_bindable_and_unused():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nobody listens there
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_waits_for_a_server_that_starts_late():
    port = free_port()
    with _serve(port, delay_s=0.3):
        t0 = time.monotonic()
        wait_until_healthy(f"http://127.0.0.1:{port}/health", timeout_s=10, interval_s=0.02)
        assert 0.25 < time.monotonic() - t0 < 5


def test_times_out_on_a_server_that_never_says_200():
    port = free_port()
    with _serve(port, status=503):
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="HTTP 503"):
            wait_until_healthy(f"http://127.0.0.1:{port}/health", timeout_s=0.3, interval_s=0.05)
        assert time.monotonic() - t0 < 3


def test_times_out_when_nothing_listens():
    with pytest.raises(TimeoutError, match="did not answer"):
        wait_until_healthy(f"http://127.0.0.1:{free_port()}/", timeout_s=0.2, interval_s=0.05)


def test_a_dead_server_fails_fast_with_runtime_error():
    calls = []

    def alive() -> bool:
        calls.append(1)
        return len(calls) < 3

    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="exited"):
        wait_until_healthy(
            f"http://127.0.0.1:{free_port()}/", timeout_s=30, interval_s=0.01, alive=alive
        )
    assert len(calls) == 3 and time.monotonic() - t0 < 5


def test_alive_is_not_needed_once_the_server_answers():
    port = free_port()
    with _serve(port):
        wait_until_healthy(f"http://127.0.0.1:{port}/", timeout_s=10, alive=lambda: False)
