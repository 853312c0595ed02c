"""Rewrite (or check) one generated block of README.md, the text between a begin and an end marker.

    python scripts/readme_claims_table.py [--check]   # and readme_perf_table.py: both run main() below
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str] | None, *, description: str, begin: str, end: str, block: Callable[[], str], source: str,
         script: str, errors: tuple[type[Exception], ...] = ()) -> int:
    """BLOCK() makes the new text, markers included. Exit 0 when rewritten (or, with --check, already current);
    1 when --check finds README.md differs; 2 when README.md lacks the markers or BLOCK raises one of ERRORS."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--check", action="store_true", help=f"exit 1 when README.md's block is not what {source} say")
    args = p.parse_args(argv)
    text = README.read_text()
    if begin not in text or end not in text:
        print(f"README.md has no {begin} ... {end} markers", file=sys.stderr)
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
            print(f"README.md's block {begin} differs from {source}: run {script}", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0
