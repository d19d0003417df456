"""Running the sandbox: in a background thread (tests, the embedded default) or in the
foreground (``recall sandbox``)."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType

import uvicorn
from fastapi import FastAPI

from orchestrator.sandbox.app import create_app
from orchestrator.sandbox.state import SandboxState

STARTUP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.005


class SandboxHandle:
    """A sandbox serving in a daemon thread. ``base_url`` is what ``*_API_BASE`` takes."""

    def __init__(
        self,
        server: uvicorn.Server,
        thread: threading.Thread,
        app: FastAPI,
        state: SandboxState,
        base_url: str,
    ) -> None:
        self._server = server
        self._thread = thread
        self.app = app
        self.state = state
        self.base_url = base_url

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut uvicorn down cleanly: pending fault delays end now, open requests finish."""
        self.app.state.waker.wake_all()
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():  # a client holding a request open: stop waiting for it
            self._server.force_exit = True
            self._thread.join(timeout_s)
        self.state.close()

    def __enter__(self) -> SandboxHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SandboxHandle({self.base_url!r})"


def run_in_thread(
    host: str = "127.0.0.1", port: int = 0, *, state: SandboxState | None = None
) -> SandboxHandle:
    """Start the sandbox on ``host:port`` (0 = a free port) and return once it accepts
    connections. ``state`` defaults to one configured from Recall's settings."""
    app = create_app(state)
    sandbox_state: SandboxState = app.state.sandbox
    sock = _listening_socket(host, port)
    bound_port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run,
        kwargs={"sockets": [sock]},
        name=f"recall-sandbox-{bound_port}",
        daemon=True,
    )
    thread.start()
    connect_host = _connectable(host)
    try:
        _wait_until_serving(server, thread, connect_host, bound_port)
    except BaseException:
        sock.close()  # on success uvicorn owns the socket and closes it at shutdown
        raise
    url_host = f"[{connect_host}]" if ":" in connect_host else connect_host
    return SandboxHandle(server, thread, app, sandbox_state, f"http://{url_host}:{bound_port}")


def serve(host: str = "127.0.0.1", port: int = 8081, *, state: SandboxState | None = None) -> None:
    """Serve in the foreground until interrupted (``recall sandbox``)."""
    app = create_app(state)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
    finally:
        app.state.sandbox.close()


def _listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP,
    # and without it every answer waits ~40 ms for the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            f"sandbox cannot listen on {host}:{port}: {exc}; pick another --port "
            "or 0 for a free one"
        ) from exc
    sock.listen(2048)
    return sock


def _connectable(host: str) -> str:
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def _wait_until_serving(
    server: uvicorn.Server, thread: threading.Thread, host: str, port: int
) -> None:
    """Poll (bounded) until uvicorn has started and the port accepts a connection."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError(f"sandbox server on {host}:{port} exited during startup")
        if server.started and _accepts(host, port):
            return
        time.sleep(POLL_INTERVAL_S)
    server.should_exit = True
    raise TimeoutError(
        f"sandbox server on {host}:{port} did not start within {STARTUP_TIMEOUT_S:.0f}s"
    )


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
