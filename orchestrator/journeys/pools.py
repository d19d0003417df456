"""Coupon pools: a CSV with a ``code`` column (other columns are ignored), one code a row.

The engine draws one code per enrollment; validation and preview only read the file.
"""

from __future__ import annotations

import csv
from pathlib import Path

from orchestrator.errors import InputError

CODE_COLUMN = "code"


def read_codes(path: Path) -> list[str]:
    """Every non-empty code of the pool file, in file order; ``InputError`` saying what is wrong."""
    if not path.is_file():
        raise InputError(f"pool file {path} not found")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if CODE_COLUMN not in (reader.fieldnames or []):
            raise InputError(f"pool file {path} has no {CODE_COLUMN!r} column in its header")
        codes = [row[CODE_COLUMN].strip() for row in reader if (row[CODE_COLUMN] or "").strip()]
    if not codes:
        raise InputError(f"pool file {path} has no codes")
    return codes
