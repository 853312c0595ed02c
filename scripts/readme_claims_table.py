"""The table of the guidance's claims in docs/ablations.md, rebuilt from the committed frontier reports (never typed).

    python scripts/readme_claims_table.py           # rewrite the table between the markers in docs/ablations.md
    python scripts/readme_claims_table.py --check   # exit 1 if the page's table differs from the reports

One row per claim x domain, from every reports/*/effects.json written by a frontier (LR-crossed) ablation report: the
guidance's claims first, then the harness's own questions (replay), marked as such.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import readme_block  # noqa: E402

from cpt_harness.reporting.ablation_report import claims_of_the_guidance  # noqa: E402

PAGE = ROOT / "docs" / "ablations.md"  # the README keeps a one-line summary and a link to it
BEGIN, END = "<!-- claims-table:begin (scripts/readme_claims_table.py) -->", "<!-- claims-table:end -->"


def rows() -> list[str]:
    out = [
        "| claim | domain | verdict | matched effect, 95% CI | the other metric | conditions | report |",
        "|---|---|---|---|---|---|---|",
    ]
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
                f"{ci}, n = {e['n']} | {e['other']} | {e['conditions']} | `{path.parent.relative_to(ROOT)}` |"
            )
    return out + guidance + other  # the guidance's claims first, then the harness's own questions (replay)


def table() -> str:
    return "\n".join([BEGIN, *rows(), END])


def main(argv: list[str] | None = None) -> int:
    return readme_block.main(
        argv,
        page=PAGE,
        description=__doc__.split("\n")[0],
        begin=BEGIN,
        end=END,
        block=table,
        source="reports/*/effects.json",
        script="scripts/readme_claims_table.py",
    )


if __name__ == "__main__":
    sys.exit(main())
