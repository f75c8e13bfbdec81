"""Tiny random models and toy data so that the default tests run in seconds."""

from __future__ import annotations

import os

# Under pytest-xdist (`make test`) each worker takes its share of the cores, and so do the runs it
# starts: over tiny models torch's threads gain little, two tests side by side gain more.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // WORKERS))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

if WORKERS > 1:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture
def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config).eval()


@pytest.fixture
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


WORDS = [
    "the",
    "a",
    "sport",
    "team",
    "won",
    "match",
    "goal",
    "game",
    "play",
    "market",
    "bank",
    "profit",
    "shares",
    "stock",
    "price",
    "vote",
    "party",
    "election",
    "minister",
    "law",
    "film",
    "music",
    "star",
    "award",
    "show",
]


def _tokenizer(folder):
    """A word-level tokenizer over WORDS, saved in ``folder`` like any Hub tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate([*specials, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="[SEP]",
    )
    tok.save_pretrained(folder)
    return tok


@pytest.fixture
def tiny_bert_dir(tmp_path, tiny_bert):
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    _tokenizer(folder)
    tiny_bert.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_llama_dir(tmp_path, tiny_llama):
    folder = tmp_path / "tiny-llama"
    folder.mkdir()
    tok = _tokenizer(folder)
    tiny_llama.config.eos_token_id = tok.eos_token_id
    tiny_llama.config.pad_token_id = tok.pad_token_id
    tiny_llama.save_pretrained(folder)
    return folder


@pytest.fixture
def topic_jsonl(tmp_path):
    """A learnable 3-class task: the label is the topic of the words."""
    import json
    import random

    topics = [WORDS[2:9], WORDS[9:14], WORDS[14:19]]
    rng = random.Random(0)
    path = tmp_path / "topics.jsonl"
    with path.open("w") as f:
        for i in range(240):
            label = i % 3
            text = " ".join(rng.choice(topics[label]) for _ in range(8))
            f.write(
                json.dumps({"text": text, "label": ["sport", "money", "politics"][label]}) + "\n"
            )
    return path


@pytest.fixture
def headline_jsonl(tmp_path):
    import json
    import random

    rng = random.Random(0)
    path = tmp_path / "gen.jsonl"
    with path.open("w") as f:
        for _ in range(120):
            words = [rng.choice(WORDS) for _ in range(10)]
            f.write(
                json.dumps({"instruction": " ".join(words), "response": " ".join(words[:3])}) + "\n"
            )
    return path
