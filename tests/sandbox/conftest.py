"""One real sandbox server per test module (reset before each test), real SDK clients pointed
at it, and a real HTTP receiver for the callbacks it pushes."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from sandbox_helpers import CONFIG, Receiver, SandboxWeChatClient, SandboxWeComClient
from twilio.rest import Client as TwilioClient

from orchestrator.sandbox.server import SandboxHandle, run_in_thread
from orchestrator.sandbox.state import SandboxState
from tests.support import jpeg


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxHandle]:
    with run_in_thread(state=SandboxState(CONFIG)) as handle:
        yield handle


@pytest.fixture
def sandbox(server: SandboxHandle) -> SandboxHandle:
    """The module's sandbox, forgotten and back to default config for this test."""
    server.state.reset()
    server.state.configure(CONFIG.model_dump())
    return server


@pytest.fixture
def state(sandbox: SandboxHandle) -> SandboxState:
    return sandbox.state


@pytest.fixture
def control(sandbox: SandboxHandle) -> Iterator[httpx.Client]:
    """An HTTP client for the /_sandbox control API."""
    with httpx.Client(base_url=sandbox.base_url, trust_env=False, timeout=30) as client:
        yield client


@pytest.fixture
def wechat(sandbox: SandboxHandle) -> SandboxWeChatClient:
    return SandboxWeChatClient(
        sandbox.base_url, CONFIG.wechat_appid, CONFIG.wechat_secret, auto_retry=False
    )


@pytest.fixture
def wecom(sandbox: SandboxHandle) -> SandboxWeComClient:
    return SandboxWeComClient(
        sandbox.base_url, CONFIG.wecom_corp_id, CONFIG.wecom_secret, auto_retry=False
    )


@pytest.fixture
def twilio(sandbox: SandboxHandle) -> TwilioClient:
    client = TwilioClient(CONFIG.twilio_account_sid, CONFIG.twilio_auth_token)
    client.api.base_url = sandbox.base_url
    client.edge = None
    client.region = None
    return client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def news_media_id(wechat: SandboxWeChatClient) -> str:
    """A temporary article (``media/uploadnews``) with a temporary thumb as its cover."""
    thumb = wechat.media.upload("thumb", ("cover.jpg", jpeg(), "image/jpeg"))["media_id"]
    article = {"thumb_media_id": thumb, "title": "We miss you", "content": "<p>Come back</p>"}
    media_id: str = wechat.media.upload_articles([article])["media_id"]
    return media_id


@pytest.fixture
def openids() -> Callable[[int], list[str]]:
    def make(n: int, prefix: str = "o") -> list[str]:
        return [f"{prefix}{i:027d}" for i in range(n)]

    return make
