"""A worker child keeps what it inherited and its runtime out of the garbage collector's walks."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import gc
from celery.signals import worker_process_init
import workers.app  # connects the worker's per-process set-up

gc.unfreeze()
before = gc.get_freeze_count()
worker_process_init.send(sender=None)
print(before, gc.get_freeze_count())
"""


def test_a_forked_worker_child_freezes_what_it_inherited() -> None:
    # In a process of its own: the signal drops engines and the runtime, as after a fork.
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, check=True)
    before, after = map(int, done.stdout.split())
    assert before == 0
    assert after > 10_000  # the modules, Celery's app, the engine's code
