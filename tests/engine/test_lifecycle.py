"""`recall run` and `recall simulate` stopped as systemd and Docker stop them (SIGTERM) and as
a terminal does (Ctrl-C: SIGINT to the whole foreground process group): every child gone,
the embedded Redis too, nothing left in the state directory that points at it; and a
second owner of a live state directory refused.

Each test starts the real command as a subprocess in a temporary state directory and
waits on definite conditions (a line on stderr, a process appearing or gone), each
bounded by a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import redis

from orchestrator.engine.stack import free_port

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 180.0  # start-up on a loaded 2-core machine; a bound, never a sleep


def wait_until(what: str, condition: Callable[[], object], timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@dataclass
class Recall:
    """One `recall …` process in a session of its own, its stderr in a file."""

    proc: subprocess.Popen[bytes]
    state: Path
    stderr_file: Path

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text()

    def descendants(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]

    def redis_pid(self) -> int:
        url = (self.state / "redis.url").read_text().strip()
        client = redis.Redis.from_url(url)
        try:
            return int(client.info("server")["process_id"])
        finally:
            client.close()


@pytest.fixture
def recall(tmp_path: Path) -> Iterator[Callable[..., Recall]]:
    started: list[Recall] = []

    def start(*args: str, state: Path | None = None) -> Recall:
        state = state or tmp_path / "state"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("RECALL_") or k.startswith("RECALL_TEST_")}
        env |= {"RECALL_STATE_DIR": str(state), "RECALL_JOURNEYS_DIR": str(REPO / "journeys"),
                "RECALL_TEMPLATES_DIR": str(REPO / "templates")}
        stderr_file = tmp_path / f"stderr-{len(started)}.txt"
        with stderr_file.open("wb") as sink:
            proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args],
                                    cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                                    stderr=sink, start_new_session=True)
        started.append(Recall(proc, state, stderr_file))
        return started[-1]

    yield start
    for r in started:  # a failed test must not leave its processes behind either
        if r.proc.poll() is None:
            os.killpg(r.proc.pid, signal.SIGKILL)
            r.proc.wait()


def running_stack(r: Recall) -> list[int]:
    """Wait until the stack is up (worker with its pool child, beat, Redis); its pids."""
    wait_until("recall run says it is running", lambda: "Ctrl-C stops." in r.stderr
               or r.proc.poll() is not None)
    assert r.proc.poll() is None, r.stderr

    def worker_pool_started() -> bool:
        return any(psutil.Process(pid).children() for pid in r.descendants()
                   if "worker" in " ".join(psutil.Process(pid).cmdline()))

    wait_until("the worker's pool process", worker_pool_started)
    pids = [*r.descendants(), r.redis_pid()]
    assert len(pids) == 4, pids  # worker, its pool child, beat; and the embedded Redis
    return pids


def assert_nothing_left(r: Recall, pids: list[int], socket: Path) -> None:
    left = [pid for pid in pids if alive(pid)]
    assert left == [], [psutil.Process(pid).cmdline() for pid in left]
    assert not (r.state / "redis.url").exists()
    assert not socket.exists()
    assert not (r.state / "redis.db").exists()  # the embedded Redis keeps nothing on disk


def socket_of(r: Recall) -> Path:
    return Path((r.state / "redis.url").read_text().strip().removeprefix("unix://"))


def test_sigterm_stops_every_child_and_a_second_run_is_refused_meanwhile(
    recall: Callable[..., Recall],
) -> None:
    first = recall("run", "--port", str(free_port()))
    pids = running_stack(first)
    url = (first.state / "redis.url").read_text()

    second = recall("run", "--port", str(free_port()), state=first.state)
    assert second.proc.wait(timeout=DEADLINE_S) == 1
    assert f"error: the state directory {first.state} is in use by another Recall (pid " \
           f"{first.proc.pid}, `recall run --port" in second.stderr
    assert f"stop that one first (Ctrl-C in its terminal, or `kill {first.proc.pid}`), or " \
           "give this one a state directory of its own: RECALL_STATE_DIR=<dir>" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1  # one line, however narrow the pipe
    assert all(alive(pid) for pid in pids) and (first.state / "redis.url").read_text() == url

    socket = socket_of(first)
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=DEADLINE_S) == 0
    assert "SIGTERM received: stopping beat, worker 1, API, sandbox, embedded Redis\n" \
           "stopped in " in first.stderr
    assert_nothing_left(first, pids, socket)


def test_ctrl_c_stops_every_child(recall: Callable[..., Recall]) -> None:
    r = recall("run", "--port", str(free_port()))
    pids = running_stack(r)
    socket = socket_of(r)
    os.killpg(r.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert r.proc.wait(timeout=DEADLINE_S) == 0
    assert "SIGINT received: stopping beat, worker 1, API, sandbox, embedded Redis\n" \
           "stopped in " in r.stderr
    assert_nothing_left(r, pids, socket)
    # The state directory is free again: the next run starts.
    again = recall("run", "--port", str(free_port()), state=r.state)
    running_stack(again)
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(timeout=DEADLINE_S) == 0


def test_sigterm_stops_a_simulation_and_its_children(recall: Callable[..., Recall]) -> None:
    r = recall("simulate", "--days", "3650", "--start", "2026-03-01T00:00:00+08:00")

    def worker_pool_started() -> bool:
        return r.proc.poll() is None and any(
            p.children() for p in psutil.Process(r.proc.pid).children()
            if "worker" in " ".join(p.cmdline()))

    wait_until("simulate's worker and its pool process", worker_pool_started)
    pids = [*r.descendants(), r.redis_pid()]
    socket = socket_of(r)
    r.proc.send_signal(signal.SIGTERM)
    assert r.proc.wait(timeout=DEADLINE_S) == 128 + signal.SIGTERM
    assert "SIGTERM received: stopping worker 1, API, sandbox, embedded Redis\n" in r.stderr
    assert "simulate stopped before its end (SIGTERM); what it did so far stays in the " \
           "database" in r.stderr
    assert_nothing_left(r, pids, socket)
