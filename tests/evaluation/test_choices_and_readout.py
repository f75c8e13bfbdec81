"""Verbalised-label scoring against a brute-force forward, and the refitted readout."""

import torch

from prelort.adapters.inject import inject_nested_lora
from prelort.data.encoding import EncodedSplit
from prelort.evaluation.choices import choice_scores
from prelort.evaluation.readout import fit_readout, head_features, head_outputs


def brute_force(model, prompt: list[int], choice: list[int]) -> float:
    """Sum of log p(choice tokens | prompt, earlier choice tokens), one unpadded sequence."""
    ids = torch.tensor([prompt + choice])
    logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
    return sum(float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(choice))


def test_choice_scores_equal_one_sequence_at_a_time(tiny_llama):
    adapted = inject_nested_lora(tiny_llama, max_rank=4, alpha=8.0)
    g = torch.Generator().manual_seed(0)
    adapted.reset_parameters(g)
    for layer in adapted.layers.values():  # a non-zero adapter, so the LoRA path is exercised
        torch.nn.init.normal_(layer.lora_b, std=0.5, generator=g)
    adapted.set_active_rank(2)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # different lengths: left padding
    choices = [[20, 3], [21, 22, 23, 3], [24, 25, 3]]  # multi-token labels ending in eos
    enc = EncodedSplit(prompts, [0, 1, 2], choices=choices)
    with torch.no_grad():
        scores = choice_scores(adapted.model, enc, [0, 1, 2], pad_id=0)
        expected = torch.tensor(
            [[brute_force(adapted.model, p, c) for c in choices] for p in prompts]
        )
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_readout_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 16, generator=g) * 3
    y = torch.arange(90) % 3
    x = centers[y] + torch.randn(90, 16, generator=g)
    mean, std, weight, bias = fit_readout(x, y, 3)
    predictions = (((x - mean) / std).double() @ weight.T + bias).argmax(-1)
    assert (predictions == y).float().mean() > 0.95


def test_head_features_are_the_inputs_of_the_classifier(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    enc = EncodedSplit([[2, 5, 6, 3], [2, 7, 3]], [0, 1])
    features = head_features(adapted, enc, [0, 1], pad_id=0, batch_size=2).clone()
    with torch.no_grad():
        logits = adapted.model.classifier(features)
        ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
        mask = (ids != 0).long()
        direct = adapted.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits, direct)


def test_head_outputs_give_the_logits_and_features_of_one_forward(tiny_bert):
    adapted = inject_nested_lora(tiny_bert, max_rank=4, alpha=8.0, train_head=True)
    g = torch.Generator().manual_seed(0)
    adapted.reset_parameters(g)
    for layer in adapted.layers.values():
        torch.nn.init.normal_(layer.lora_b, std=0.5, generator=g)
    adapted.set_active_rank(2)
    adapted.model.eval()
    enc = EncodedSplit([[2, 5, 6, 3], [2, 7, 3], [2, 8, 9, 10, 3]], [0, 1, 0])
    outputs = head_outputs(adapted, enc, [0, 1, 2], pad_id=0, batch_size=2)  # ragged batches
    with torch.no_grad():
        torch.testing.assert_close(outputs.logits, adapted.model.classifier(outputs.features))
        for row, ids in enumerate(enc.input_ids):
            direct = adapted.model(input_ids=torch.tensor([ids])).logits[0]
            torch.testing.assert_close(outputs.logits[row], direct, atol=1e-5, rtol=1e-5)
