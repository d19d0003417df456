"""Serving the API from inside another process (``recall run``/``simulate``, tests).

The listening socket is bound before uvicorn starts, so connections made right after
``serve_in_thread`` returns wait in the kernel's backlog until uvicorn accepts them: no
polling for readiness.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp


class ApiHandle:
    """An ASGI app served by uvicorn in a daemon thread; ``base_url`` reaches it."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, base_url: str) -> None:
        self._server, self._thread = server, thread
        self.base_url = base_url

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)
        if self._thread.is_alive():  # a client holds a request open: stop waiting for it
            self._server.force_exit = True
            self._thread.join(timeout_s)

    def __enter__(self) -> ApiHandle:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_in_thread(app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> ApiHandle:
    """Serve ``app`` on ``host:port`` (0: a free port) in a daemon thread."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise OSError(f"the API cannot listen on {host}:{port}: {exc}; pick another port") from exc
    bound = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name=f"recall-api-{bound}", daemon=True)
    thread.start()
    shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, f"[{host}]" if ":" in host else host)
    return ApiHandle(server, thread, f"http://{shown}:{bound}")
