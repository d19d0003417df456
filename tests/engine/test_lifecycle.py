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


def processes_of(state: Path) -> dict[int, str]:
    """Every live process anywhere started for ``state``: children inherit the environment
    (``RECALL_STATE_DIR``), the embedded ``redis-server`` included, so nothing escapes by
    being reparented to init. Zombies are already gone."""
    found = {}
    for proc in psutil.process_iter():
        try:
            theirs = proc.environ().get("RECALL_STATE_DIR")
            if (theirs and Path(theirs).resolve() == state.resolve()
                    and proc.status() != psutil.STATUS_ZOMBIE):
                found[proc.pid] = " ".join(proc.cmdline())
        except psutil.Error:  # gone meanwhile, or not ours to read
            continue
    return found


@dataclass
class Recall:
    """One `recall …` process in a session of its own, its stderr in a file."""

    proc: subprocess.Popen[bytes]
    state: Path
    stderr_file: Path

    @property
    def stderr(self) -> str:
        return self.stderr_file.read_text()


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
    for state in {r.state for r in started}:  # children run in sessions of their own
        for pid in processes_of(state):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def running_stack(r: Recall) -> None:
    """Wait until the stack is up: worker with its pool process, beat, embedded Redis."""
    wait_until("recall run says it is running", lambda: "Ctrl-C stops." in r.stderr
               or r.proc.poll() is not None)
    assert r.proc.poll() is None, r.stderr
    wait_until("the worker's pool process", lambda: worker_pool_started(r))
    started = [c for pid, c in processes_of(r.state).items() if pid != r.proc.pid]
    assert sum(" beat " in c for c in started) == 1, started


def worker_pool_started(r: Recall) -> bool:
    return r.proc.poll() is None and sum(
        " worker " in c for c in processes_of(r.state).values()) >= 2


def redis_pid(r: Recall) -> int:
    """The embedded Redis (its title overwrites its environment, so it is asked)."""
    client = redis.Redis.from_url((r.state / "redis.url").read_text().strip())
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def assert_nothing_left(r: Recall, redis_server: int, socket: Path) -> None:
    assert processes_of(r.state) == {}
    assert not alive(redis_server)
    assert not (r.state / "redis.url").exists()
    assert not socket.exists()
    assert not (r.state / "redis.db").exists()  # the embedded Redis keeps nothing on disk


def socket_of(r: Recall) -> Path:
    return Path((r.state / "redis.url").read_text().strip().removeprefix("unix://"))


def test_sigterm_stops_every_child_and_a_second_run_is_refused_meanwhile(
    recall: Callable[..., Recall],
) -> None:
    first = recall("run", "--port", str(free_port()))
    running_stack(first)
    started = processes_of(first.state)
    url = (first.state / "redis.url").read_text()

    second = recall("run", "--port", str(free_port()), state=first.state)
    assert second.proc.wait(timeout=DEADLINE_S) == 1
    assert f"error: the state directory {first.state} is in use by another Recall (pid " \
           f"{first.proc.pid}, `recall run --port" in second.stderr
    assert f"stop that one first (Ctrl-C in its terminal, or `kill {first.proc.pid}`), or " \
           "give this one a state directory of its own: RECALL_STATE_DIR=<dir>" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1  # one line, however narrow the pipe
    assert processes_of(first.state) == started  # the first run is untouched
    assert (first.state / "redis.url").read_text() == url

    socket, redis_server = socket_of(first), redis_pid(first)
    first.proc.send_signal(signal.SIGTERM)
    assert first.proc.wait(timeout=DEADLINE_S) == 0
    assert "SIGTERM received: stopping beat, worker 1, API, sandbox, embedded Redis\n" \
           "stopped in " in first.stderr
    assert_nothing_left(first, redis_server, socket)


def test_ctrl_c_stops_every_child(recall: Callable[..., Recall]) -> None:
    r = recall("run", "--port", str(free_port()))
    running_stack(r)
    socket, redis_server = socket_of(r), redis_pid(r)
    os.killpg(r.proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    assert r.proc.wait(timeout=DEADLINE_S) == 0
    assert "SIGINT received: stopping beat, worker 1, API, sandbox, embedded Redis\n" \
           "stopped in " in r.stderr
    assert_nothing_left(r, redis_server, socket)
    # The state directory is free again: the next run starts.
    again = recall("run", "--port", str(free_port()), state=r.state)
    running_stack(again)
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(timeout=DEADLINE_S) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])  # SIGHUP: terminal closed
def test_a_signal_stops_a_simulation_and_its_children(
    recall: Callable[..., Recall], signum: signal.Signals
) -> None:
    r = recall("simulate", "--days", "3650", "--start", "2026-03-01T00:00:00+08:00")

    wait_until("simulate's worker and its pool process", lambda: worker_pool_started(r))
    socket, redis_server = socket_of(r), redis_pid(r)
    r.proc.send_signal(signum)
    assert r.proc.wait(timeout=DEADLINE_S) == 128 + signum
    assert f"{signum.name} received: stopping worker 1, API, sandbox, embedded Redis\n" \
        in r.stderr
    assert f"simulate stopped before its end ({signum.name}); what it did so far stays in " \
           "the database" in r.stderr
    assert_nothing_left(r, redis_server, socket)


def test_after_a_sigkill_the_children_stop_themselves_and_the_next_run_clears_redis(
    recall: Callable[..., Recall],
) -> None:
    """SIGKILL leaves the owner no chance: the worker and beat notice their parent is gone
    and stop; the orphaned embedded Redis is stopped by the next owner of the directory."""
    killed = recall("run", "--port", str(free_port()))
    running_stack(killed)
    orphan = redis_pid(killed)
    killed.proc.kill()
    killed.proc.wait()
    wait_until("worker and beat stop by themselves", lambda: processes_of(killed.state) == {})
    assert alive(orphan)  # a daemon: nobody but the next owner stops it

    again = recall("run", "--port", str(free_port()), state=killed.state)
    running_stack(again)
    assert not alive(orphan)
    assert f"stopping the embedded Redis (pid {orphan}) left running by a killed run" \
        in again.stderr
    assert redis_pid(again) != orphan
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(timeout=DEADLINE_S) == 0


def test_a_child_whose_owner_died_before_it_started_watching_stops_itself() -> None:
    """The owner can be SIGKILLed while its beat or worker is still importing (seconds on a
    loaded machine): by the time the child would watch its owner, its parent is already
    init. It must stop then, not run on as an orphan nobody watches."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    child = subprocess.Popen(
        [sys.executable, "-c", "from orchestrator.engine.lifecycle import watch_owner\n"
         "watch_owner()\nimport time\ntime.sleep(600)\n"],
        env={**os.environ, "RECALL_OWNER_PID": str(gone.pid)})
    try:
        assert child.wait(timeout=DEADLINE_S) == -signal.SIGTERM
    finally:
        child.kill()
