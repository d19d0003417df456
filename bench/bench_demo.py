"""demo_s: the demo on its defaults, after install, wall time.

``recall demo`` when the installed ``recall`` has it, else ``make demo`` (the same steps
from the Makefile). Either runs in a scratch copy of the repository's journeys, templates
and Makefile, with no ``RECALL_*`` variable inherited, so it uses the embedded defaults
(SQLite, embedded Redis, in-process sandbox) and writes nothing into the checkout. There
is no baseline: ``baseline`` and ``ratio`` are null.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stack import BENCH, emit, load_average, log, recall_argv

ROOT = BENCH.parent


def command(workdir: Path) -> list[str]:
    recall = recall_argv()
    probe = subprocess.run([*recall, "demo", "--help"], capture_output=True, cwd=workdir,
                           env=_env())
    if probe.returncode == 0:
        return [*recall, "demo"]
    venv = Path(sys.executable).parent.parent
    return ["make", "--no-print-directory", "demo", f"VENV={venv}"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RECALL_")}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="recall-bench-demo-") as scratch:
        workdir = Path(scratch)
        for name in ("journeys", "templates"):
            shutil.copytree(ROOT / name, workdir / name)
        for name in ("Makefile", "pyproject.toml"):  # copy2 keeps the install stamp newer
            shutil.copy2(ROOT / name, workdir / name)
        argv = command(workdir)
        log(f"demo: {' '.join(argv[:3])} in {workdir}; load {load_average()}")
        began = time.perf_counter()
        done = subprocess.run(argv, cwd=workdir, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"bench_demo: the demo failed ({done.returncode}):\n"
                         f"{done.stderr[-3000:]}")
    log(f"demo: {seconds:.1f}s; load {load_average()}")
    emit("demo_s", round(seconds, 1), "s", None, None)


if __name__ == "__main__":
    main()
