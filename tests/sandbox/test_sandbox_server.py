"""run_in_thread / stop and the `recall sandbox` command."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

import httpx
import pytest
import typer
from typer.testing import CliRunner

from orchestrator.sandbox.cli import register
from orchestrator.sandbox.server import run_in_thread
from orchestrator.sandbox.state import SandboxState


def refuses(base_url: str) -> bool:
    parts = urlsplit(base_url)
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return False
    except OSError:
        return True


def test_port_0_picks_free_ports_and_serves_at_once() -> None:
    with (
        run_in_thread(port=0, state=SandboxState()) as one,
        run_in_thread(state=SandboxState()) as two,
    ):
        assert one.base_url != two.base_url
        assert httpx.get(f"{one.base_url}/_sandbox/status").json()["records"] == 0
        assert httpx.get(f"{two.base_url}/_sandbox/clock").status_code == 200
    assert refuses(one.base_url) and refuses(two.base_url)


def test_a_busy_port_is_reported() -> None:
    with run_in_thread(state=SandboxState()) as running:
        port = urlsplit(running.base_url).port
        assert port is not None
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            run_in_thread(port=port, state=SandboxState())


def test_stop_answers_held_requests_instead_of_waiting_them_out() -> None:
    handle = run_in_thread(state=SandboxState())
    httpx.post(
        f"{handle.base_url}/_sandbox/faults",
        json={"kind": "timeout", "seconds": 3600, "provider": "wechat"},
    )
    answers: list[int] = []
    query = {
        "grant_type": "client_credential",
        "appid": handle.state.config.wechat_appid,
        "secret": handle.state.config.wechat_secret,
    }
    caller = threading.Thread(
        target=lambda: answers.append(
            httpx.get(f"{handle.base_url}/cgi-bin/token", params=query, timeout=60).status_code
        )
    )
    caller.start()
    assert handle.app.state.waker.wait_until_waiting(1, timeout_s=10)

    handle.stop()
    caller.join(timeout=10)

    assert answers == [200] and refuses(handle.base_url)


def test_recall_sandbox_command_is_registered() -> None:
    app = typer.Typer()
    register(app)

    @app.command("other")
    def other() -> None:  # a second command keeps Typer in multi-command mode
        pass

    result = CliRunner().invoke(app, ["sandbox", "--help"])
    assert result.exit_code == 0
    assert "--port" in result.output and "--host" in result.output
