"""Rewrite (or check) one generated block of a documentation page, the text between a begin and an end marker.

    python scripts/readme_claims_table.py [--check]   # docs/ablations.md; readme_perf_table.py: docs/gpu.md

Both scripts run main() below with the page that holds their table (the names are from when the tables lived in
README.md; the README keeps a one-line summary of each and links to the page).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else str(page)


def main(
    argv: list[str] | None,
    *,
    page: Path,
    description: str,
    begin: str,
    end: str,
    block: Callable[[], str],
    source: str,
    script: str,
    errors: tuple[type[Exception], ...] = (),
) -> int:
    """BLOCK() makes the new text, markers included, for PAGE. Exit 0 when rewritten (or, with --check, already
    current); 1 when --check finds PAGE differs; 2 when PAGE lacks the markers or BLOCK raises one of ERRORS."""
    name = _name(page)
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--check", action="store_true", help=f"exit 1 when {name}'s block is not what {source} say")
    args = p.parse_args(argv)
    text = page.read_text()
    if begin not in text or end not in text:
        print(f"{name} has no {begin} ... {end} markers", file=sys.stderr)
        return 2
    try:
        new_block = block()
    except errors as e:
        print(f"error: {e.__class__.__name__}: {e}", file=sys.stderr)
        return 2
    head, rest = text.split(begin, 1)
    new = head + new_block + rest.split(end, 1)[1]
    if args.check:
        if new != text:
            print(f"{name}'s block {begin} differs from {source}: run {script}", file=sys.stderr)
            return 1
        return 0
    page.write_text(new)
    return 0
