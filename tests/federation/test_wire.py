"""The wire format: 16-bit adapters halve the traffic, round every number once, and still learn."""

import pytest
import torch

from prelort.errors import ConfigError
from prelort.federation import ClientReply
from prelort.federation.wire import through_wire, wire_bytes
from prelort.flower.codec import decode_reply, encode_reply
from prelort.simulation import run_simulation
from tests_helpers import tiny


def test_fp32_is_exact_and_16_bit_rounds_once():
    state = {"m.lora_a": torch.randn(2, 5), "m.lora_b": torch.randn(3, 2), "head": torch.randn(4)}
    assert all(through_wire(state, "float32")[k] is v for k, v in state.items())
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        got = through_wire(state, name)
        for key, value in state.items():
            assert got[key].dtype == torch.float32
            assert torch.equal(got[key], value.to(dtype).float())
            assert torch.equal(through_wire(got, name)[key], got[key])  # rounding is idempotent
    assert wire_bytes(10, "float32") == 40 and wire_bytes(10, "bfloat16") == 20


@pytest.mark.parametrize("wire", ["float32", "bfloat16", "float16"])
def test_flower_messages_carry_the_wire_format(wire):
    state = {"m.lora_a": torch.randn(8, 64), "m.lora_b": torch.randn(64, 8)}
    content = encode_reply(ClientReply(1, state, 8, 10, 0.5, 0.0), wire)
    sent = sum(len(a.data) for a in content.array_records["adapter"].values())
    numbers = wire_bytes(2 * 8 * 64, wire)
    assert numbers <= sent <= numbers + 2 * 200  # each array adds its numpy header
    back = decode_reply(content, wire)
    for key, value in through_wire(state, wire).items():
        assert back.state[key].dtype == torch.float32
        assert torch.equal(back.state[key], value)


def test_a_bfloat16_run_halves_the_bytes_and_stays_close(tiny_bert_dir, topic_jsonl, tmp_path):
    fp32 = run_simulation(tiny(tiny_bert_dir, topic_jsonl, tmp_path / "a"), progress=False)
    bf16 = run_simulation(
        tiny(tiny_bert_dir, topic_jsonl, tmp_path / "b", wire_dtype="bfloat16"), progress=False
    )
    for t32, t16 in zip(fp32.traffic, bf16.traffic, strict=True):
        assert 2 * t16["bytes_up"] == t32["bytes_up"]
        assert 2 * t16["bytes_down"] == t32["bytes_down"]
    for key, value in fp32.global_state.items():
        gap = (bf16.global_state[key] - value).norm() / value.norm()
        assert 0 < gap < 0.05, key  # rounded, yet the same adapter to a few per mille
    for tier, metrics in fp32.final.items():
        assert abs(bf16.final[tier]["accuracy"] - metrics["accuracy"]) <= 3 / 24 + 1e-9


def test_an_unknown_wire_format_is_refused(tiny_bert_dir, topic_jsonl, tmp_path):
    with pytest.raises(ConfigError, match="wire_dtype"):
        tiny(tiny_bert_dir, topic_jsonl, tmp_path, wire_dtype="int8")
