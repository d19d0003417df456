"""The command line's two consoles: results on stdout, messages and errors on stderr.

Nothing is wrapped (``soft_wrap``): piped into a file or another program a message stays
one line, so ``FILE:LINE:COL: message`` output stays one problem a line; a terminal wraps
long lines by itself. Nothing is highlighted: numbers and paths print as written.
"""

from __future__ import annotations

from rich.console import Console


def stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)
