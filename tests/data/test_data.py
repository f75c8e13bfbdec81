import json

import pytest

from prelort.data import load_task, partition_indices
from prelort.data.encoding import IGNORE, causal_batch, encode_split
from prelort.errors import ConfigError, DataError


def test_task_file_classification(topic_jsonl):
    task = load_task(str(topic_jsonl))
    assert task.kind == "classification" and task.num_labels == 3
    assert len(task.train) + len(task.test) == 240


def test_task_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_task(str(tmp_path / "none.jsonl"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"foo": 1}) + "\n")
    with pytest.raises(DataError, match="need fields"):
        load_task(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    with pytest.raises(DataError, match="broken.jsonl:1"):
        load_task(str(broken))
    with pytest.raises(ConfigError, match="^task"):
        load_task("imagenet")


def test_partitions_cover_everything_once():
    labels = [i % 4 for i in range(400)]
    for scheme in ("iid", "dirichlet", "pathological"):
        parts = partition_indices(labels, 5, scheme, seed=0, alpha=0.5, classes_per_client=2)
        flat = sorted(i for p in parts for i in p)
        assert len(flat) == len(set(flat))
        if scheme != "pathological":
            assert flat == list(range(400))
    assert partition_indices(labels, 5, "dirichlet", seed=3) == partition_indices(
        labels, 5, "dirichlet", seed=3
    )
    with pytest.raises(DataError, match="too few"):
        partition_indices(labels[:3], 5)


def test_causal_labels_cover_target_and_eos_only(tiny_llama_dir, headline_jsonl):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    task = load_task(str(headline_jsonl))
    enc = encode_split(tok, task, task.train, max_length=20)
    batch = causal_batch(enc, [0, 1], tok.pad_token_id)
    for row in range(2):
        target = enc.target_ids[row]
        labelled = batch["labels"][row][batch["labels"][row] != IGNORE].tolist()
        assert labelled == target and target[-1] == tok.eos_token_id
        assert len(enc.input_ids[row]) + len(target) <= 20 + 1
