"""The README's table of the guidance's claims, rebuilt from the committed frontier reports (never typed).

    python scripts/readme_claims_table.py           # rewrite the table between the markers in README.md
    python scripts/readme_claims_table.py --check   # exit 1 if README.md's table differs from the reports

One row per claim x domain, from every reports/*/effects.json written by a frontier (LR-crossed) ablation report: the
guidance's claims first, then the harness's own questions (replay), marked as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cpt_harness.report_files import claims_of_the_guidance

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- claims-table:begin (scripts/readme_claims_table.py) -->", "<!-- claims-table:end -->"


def rows() -> list[str]:
    out = ["| claim | domain | verdict | matched effect, 95% CI | the other metric | conditions | report |",
           "|---|---|---|---|---|---|---|"]
    guidance, other = [], []
    for path in sorted(ROOT.glob("reports/*/effects.json")):
        for e in json.loads(path.read_text()):
            if "conditions" not in e:  # a fixed-LR report: not a frontier verdict
                continue
            ours = e["factor"] not in claims_of_the_guidance()
            ci = f"[{e['low95']:+.4f}, {e['high95']:+.4f}]" if e["n"] >= 2 else "no interval"
            claim = f"{e['claim']} *(not a claim of the guidance)*" if ours else e["claim"]
            (other if ours else guidance).append(
                f"| {claim} | {e['domain']} | **{e['verdict']}** | {e['analysis']}: {e['estimate']:+.4f} "
                f"{ci}, n = {e['n']} | {e['other']} | {e['conditions']} | `{path.parent.relative_to(ROOT)}` |")
    return out + guidance + other  # the guidance's claims first, then the harness's own questions (replay)


def table() -> str:
    return "\n".join([BEGIN, *rows(), END])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 when README.md's table is not what the reports say")
    args = p.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md has no {BEGIN} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    new = head + table() + rest.split(END, 1)[1]
    if args.check:
        if new != text:
            print("README.md's claims table differs from reports/*/effects.json: run scripts/readme_claims_table.py",
                  file=sys.stderr)
            return 1
        return 0
    readme.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
