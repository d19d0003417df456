"""``make bench`` / ``make bench-quick``: every figure, one bench script at a time, then
the JSON lines together at the end (progress and notes go to stderr as they happen).

Each script owns what it uses and cleans it up (``stack.py``): a PostgreSQL database it
creates and drops, the Redis database ``RECALL_BENCH_REDIS_URL`` names (emptied before and
after), the processes it starts. A script that fails is reported and the others still run;
the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = ("bench_caps.py", "bench_touches.py", "bench_enroll.py", "bench_rss.py",
           "bench_demo.py")
FULL_ONLY = ("bench_features.py",)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, a few minutes")
    parser.add_argument("only", nargs="*", help="run only these scripts")
    args = parser.parse_args()
    scripts = [s for s in (*SCRIPTS, *(() if args.quick else FULL_ONLY))
               if not args.only or s in args.only]
    lines, failed = [], []
    began = time.monotonic()
    for script in scripts:
        argv = [sys.executable, str(BENCH / script)]
        if args.quick and script != "bench_caps.py":
            argv.append("--quick")
        started = time.monotonic()
        done = subprocess.run(argv, cwd=BENCH, stdout=subprocess.PIPE, text=True)
        print(f"[bench] {script}: {time.monotonic() - started:.0f}s"
              + (f", FAILED ({done.returncode})" if done.returncode else ""),
              file=sys.stderr, flush=True)
        if done.returncode:
            failed.append(script)
        lines += [line for line in done.stdout.splitlines() if line.startswith("{")]
    print(f"[bench] all: {time.monotonic() - began:.0f}s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    for line in lines:
        print(line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
