"""Owning a state directory and the processes started in it, and letting go of both.

``recall run``, ``recall simulate`` and ``recall demo`` start children (Celery worker and
beat, the embedded Redis) and own the state directory (its SQLite file, the ``redis.url``
other processes read, the beat schedule). Three things keep that clean:

- ``StateLock``: an ``flock`` on ``STATE_DIR/recall.lock``, so a second owner is refused
  (it would otherwise attach to the first one's Redis and run a second worker and beat on
  one SQLite file). The kernel drops the lock when its holder dies, however it dies.
- ``StopSignals``: SIGINT (Ctrl-C), SIGTERM (systemd, Docker, ``kill``) and SIGHUP (the
  terminal closed) become one ``Stopped`` exception in the main thread, so every
  ``finally`` runs and every child is stopped. While children are being started or stopped
  a signal is remembered, not raised, so no child is ever started without being recorded
  for the stop.
- ``stop_processes``: children live in sessions of their own (a terminal's Ctrl-C reaches
  only the parent, which stops them in order: beat, workers, then what they talk to); each
  gets SIGTERM, and whatever is left of its session after a bounded wait gets SIGKILL.
- ``watch_owner``: a child whose owner was killed outright (SIGKILL: no chance to stop
  anything) stops itself; the next owner of the state directory stops a leftover
  embedded Redis (``orchestrator.store.redis``).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import psutil

from orchestrator.errors import ConfigError

# SIGHUP: the terminal closed. The children do not get it (they have sessions of their own).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_TIMEOUT_S = 10.0  # a warm Celery shutdown finishes the task in hand; then it is killed


class Stopped(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP asked this process to stop (a ``KeyboardInterrupt``, so
    code that already lets Ctrl-C through lets this through too)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.signame = signal.Signals(signum).name
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        """What a shell reports for a process ended by this signal (130, 143, 129)."""
        return 128 + self.signum


class StopSignals:
    """The stop signals as ``Stopped`` in the main thread, raised only while ``armed``.

    Disarmed (starting or stopping children) the first signal is remembered and ``arm()``
    raises it; later ones only say that the stop is under way. Outside the main thread (a
    test driving a stack from a thread) nothing is installed: signals keep their handlers.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._armed = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def arm(self) -> None:
        """From now on a signal raises ``Stopped``; one that came meanwhile raises now."""
        if self.received is not None:
            raise Stopped(self.received)
        self._armed = True

    def disarm(self) -> None:
        self._armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is None:
            self.received = signum
            if self._armed:
                self._armed = False
                raise Stopped(signum)
            _write_stderr(f"{name} received: stopping as soon as the start-up finishes\n")
        else:
            # os.write: a signal handler may run while the main thread is inside a print.
            _write_stderr(f"{name} received: already stopping, please wait\n")


def _write_stderr(text: str) -> None:
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError):  # no usable stderr (closed, or captured by a test)
        pass


class StateLock:
    """Exclusive ownership of a state directory: ``STATE_DIR/recall.lock`` under ``flock``,
    holding who owns it (pid, command, since when) for the refusal message."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / "recall.lock"
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read()
            handle.close()
            raise ConfigError(self._refusal(holder)) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "command": " ".join(_command_line()),
                                 "since": datetime.now(UTC).isoformat(timespec="seconds")}))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def _refusal(self, holder: str) -> str:
        try:
            info = json.loads(holder)
            who = f"pid {info['pid']}, `{info['command']}`, since {info['since']}"
            stop = f"Ctrl-C in its terminal, or `kill {info['pid']}`"
        except (ValueError, KeyError, TypeError):
            who, stop = "a process that is still starting", "Ctrl-C in its terminal"
        return (f"the state directory {self.state_dir.resolve()} is in use by another Recall "
                f"({who}); stop that one first ({stop}), or give this one a state directory "
                "of its own: RECALL_STATE_DIR=<dir>")


def _command_line() -> list[str]:
    return ["recall", *sys.argv[1:]]


def spawn(args: Sequence[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A child in a session of its own (see the module docstring), output to ``log``. It
    learns who owns it (``watch_owner``)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(list(args), env={**env, OWNER_ENV: str(os.getpid())},
                                stdout=sink, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


OWNER_ENV = "RECALL_OWNER_PID"
OWNER_CHECK_S = 1.0


def watch_owner() -> None:
    """In a worker or beat that ``spawn`` started: stop (SIGTERM to itself, the same warm
    shutdown its owner would ask for) once the owner is gone. An owner killed with SIGKILL
    stops nothing itself. Does nothing in any other process: the variable must name this
    process's parent (a pool process, a shell that inherited it, are not watched), unless
    the owner is already gone: killed while this process was still starting (a loaded
    machine takes seconds to reach the worker's or beat's init), it stops at once instead
    of running on as an orphan nobody watches."""
    owner = os.environ.get(OWNER_ENV, "")
    if not owner.isdigit():
        return
    if os.getppid() != int(owner):
        if not _alive(int(owner)):
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == int(owner):
            time.sleep(OWNER_CHECK_S)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="recall-owner-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process took the number: not our owner
        return False
    return True


def stop_processes(procs: Sequence[subprocess.Popen[Any]],
                   timeout_s: float = STOP_TIMEOUT_S) -> list[subprocess.Popen[Any]]:
    """SIGTERM every process at once, wait for them together (bounded), then SIGKILL what is
    left of their sessions (a Celery worker's pool children too). Returns the processes
    that had to be killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout_s
    killed = []
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            killed.append(proc)
            _kill_session(proc.pid)
            proc.wait()
    return killed


def _kill_session(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # spawned with a session, hence a group, of its own
    except (ProcessLookupError, PermissionError):
        pass


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """Until ``pid`` has exited (bounded). A zombie counts as gone: a daemon's parent is
    init, which may take a while to reap it."""
    deadline = time.monotonic() + timeout_s
    while True:
        if not is_running(pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def is_running(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def process_name(pid: int) -> str:
    try:
        return str(psutil.Process(pid).name())
    except psutil.NoSuchProcess:
        return ""


Say = Callable[[str], None]


def say_on_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
