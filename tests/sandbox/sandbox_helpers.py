"""Helpers shared by the sandbox tests: SDK clients pointed at the sandbox, a callback
receiver. (A plain module, not conftest, so tests can import its names.)"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from wechatpy import WeChatClient
from wechatpy.enterprise import WeChatClient as WeComClient

from orchestrator.sandbox.config import SandboxConfig

CONFIG = SandboxConfig()  # the defaults every test starts from
RECEIVER_WAIT_S = 10.0


class SandboxWeChatClient(WeChatClient):  # type: ignore[misc]
    """wechatpy's OA client with its hard-coded hosts pointed at the sandbox."""

    def __init__(self, base_url: str, appid: str, secret: str, **kwargs: Any) -> None:
        super().__init__(appid, secret, **kwargs)
        self.API_BASE_URL = f"{base_url}/cgi-bin/"
        self._token_url = f"{base_url}/cgi-bin/token"

    def fetch_access_token(self) -> Any:
        params = {"grant_type": "client_credential", "appid": self.appid, "secret": self.secret}
        return self._fetch_access_token(url=self._token_url, params=params)


class SandboxWeComClient(WeComClient):  # type: ignore[misc]
    """wechatpy's WeCom client with its hard-coded hosts pointed at the sandbox."""

    def __init__(self, base_url: str, corp_id: str, secret: str, **kwargs: Any) -> None:
        super().__init__(corp_id, secret, **kwargs)
        self.API_BASE_URL = f"{base_url}/cgi-bin/"
        self._token_url = f"{base_url}/cgi-bin/gettoken"

    def fetch_access_token(self) -> Any:
        params = {"corpid": self.corp_id, "corpsecret": self.secret}
        return self._fetch_access_token(url=self._token_url, params=params)


@dataclass
class Received:
    path: str  # path + query, as requested
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))


class Receiver:
    """A real HTTP server that accepts every POST with 200 and keeps what it got."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                query = dict(parse_qsl(urlsplit(self.path).query))
                with receiver._arrived:
                    receiver.requests.append(
                        Received(self.path, query, dict(self.headers.items()), body)
                    )
                    receiver._arrived.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "7")
                self.end_headers()
                self.wfile.write(b"success")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def wait_for(self, count: int) -> list[Received]:
        """Block until ``count`` requests arrived (bounded); for the background flusher."""
        with self._arrived:
            arrived = self._arrived.wait_for(
                lambda: len(self.requests) >= count, timeout=RECEIVER_WAIT_S
            )
        assert arrived, f"expected {count} callbacks, got {len(self.requests)}"
        return self.requests

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
