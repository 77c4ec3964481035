"""Parallel corpora: readers for TSV and Moses files, the Bible builder, and the fixed split.

The split is a pure function of a pair's reference (or, for user corpora, of its line
number), so every figure in the project is measured on the same sentences.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

APT_HINT = "apt-get install -y sword-text-web sword-text-sparv libsword-utils"
SWORD_MODULES = ("engWEB2015eb", "spaRV1909eb")


@dataclass(frozen=True)
class Pair:
    """One aligned sentence pair; `ref` names it (a verse reference or a line number)."""

    ref: str
    src: str
    tgt: str


def split_of(ref: str) -> str:
    """The split a pair belongs to: crc32(ref) % 100 in {0, 1} -> test, 2 -> dev, else train."""
    bucket = zlib.crc32(ref.encode()) % 100
    if bucket in (0, 1):
        return "test"
    if bucket == 2:
        return "dev"
    return "train"


def read_tsv(path: str | Path) -> list[Pair]:
    """Read `source<TAB>target` lines (a third column, if present, is the reference)."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2:
                raise ValueError(f"{path}:{n}: expected source<TAB>target, got {len(cols)} column(s)")
            ref = cols[2] if len(cols) > 2 and cols[2] else f"{Path(path).name}:{n}"
            if cols[0].strip() and cols[1].strip():
                pairs.append(Pair(ref, cols[0].strip(), cols[1].strip()))
    return pairs


def read_moses(src_path: str | Path, tgt_path: str | Path) -> list[Pair]:
    """Read a Moses pair of files: line n of one is the translation of line n of the other."""
    src = Path(src_path).read_text(encoding="utf-8").splitlines()
    tgt = Path(tgt_path).read_text(encoding="utf-8").splitlines()
    if len(src) != len(tgt):
        raise ValueError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
    return [
        Pair(f"{Path(src_path).name}:{n}", s.strip(), t.strip())
        for n, (s, t) in enumerate(zip(src, tgt, strict=True), 1)
        if s.strip() and t.strip()
    ]


def write_tsv(pairs: list[Pair], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(f"{p.src}\t{p.tgt}\t{p.ref}\n")


_DROPPED = re.compile(r"<(note|title)\b[^>]*?(?<!/)>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]*>")
_SEP = "\x00"


def clean_osis(text: str) -> str:
    """OSIS markup of one verse -> plain text.

    Notes and titles go with their contents; other tags go too, but a tag that stood between
    two word characters leaves a space ("God<note>..</note><w>created" -> "God created").
    """
    text = _DROPPED.sub(_SEP, text)
    text = _TAG.sub(_SEP, text)
    text = re.sub(rf"(?<=\w){_SEP}+(?=\w)", " ", text)
    text = text.replace(_SEP, "")
    text = html.unescape(text)
    return " ".join(text.split())


_REF_LINE = re.compile(r"^\$\$\$(.+?) (\d+):(\d+)$")


def parse_imp(text: str) -> dict[str, str]:
    """`mod2imp` output -> {"Genesis 1:1": "In the beginning, ..."}; verse 0 (headings) skipped."""
    verses: dict[str, str] = {}
    ref = None
    body: list[str] = []

    def flush() -> None:
        if ref is not None:
            clean = clean_osis("\n".join(body))
            if clean:
                verses[ref] = clean

    for line in text.splitlines():
        if line.startswith("$$$"):
            flush()
            m = _REF_LINE.match(line)
            ref = f"{m.group(1)} {m.group(2)}:{m.group(3)}" if m and m.group(3) != "0" else None
            body = []
        else:
            body.append(line)
    flush()
    return verses


def build_bible() -> list[Pair]:
    """English (World English Bible) -> Spanish (Reina-Valera 1909), paired by verse reference."""
    if shutil.which("mod2imp") is None:
        raise SystemExit(f"mod2imp not found: install the SWORD texts with `{APT_HINT}`")
    texts = []
    for module in SWORD_MODULES:
        out = subprocess.run(["mod2imp", module], capture_output=True, text=True)
        verses = parse_imp(out.stdout)
        if out.returncode != 0 or not verses:
            raise SystemExit(f"SWORD module {module} is missing: install it with `{APT_HINT}`")
        texts.append(verses)
    en, es = texts
    return [Pair(ref, en[ref], es[ref]) for ref in en if ref in es]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the English->Spanish Bible corpus and its fixed split.")
    ap.add_argument("--out", default="data/bible", help="folder for train.tsv, dev.tsv, test.tsv")
    args = ap.parse_args(argv)
    pairs = build_bible()
    out = Path(args.out)
    for split in ("train", "dev", "test"):
        part = [p for p in pairs if split_of(p.ref) == split]
        write_tsv(part, out / f"{split}.tsv")
        print(f"{split}: {len(part)} pairs -> {out / f'{split}.tsv'}", file=sys.stderr)


if __name__ == "__main__":
    main()
