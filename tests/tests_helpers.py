"""Shared builders for tests (importable as ``tests_helpers`` because tests/ is on sys.path)."""

import json

import torch
from torch import nn

from prelort.adapters import inject_nested_lora
from prelort.aggregation.secure import secure_share, weighted_sum
from prelort.config import SimulationConfig, config_from_mapping


def tiny(model_dir, task, out, **kw) -> SimulationConfig:
    base = dict(
        method="prelort",  # the paper's rule, which most tests exercise; not the CLI's default
        calibration="none",  # the default (auto) adds a round; its own tests ask for it
        model=str(model_dir),
        task=str(task),
        ranks="1,2,4",
        clients=3,
        rounds=2,
        local_steps=3,
        batch_size=8,
        lr=5e-3,
        eval_examples=24,
        generate_examples=6,
        max_new_tokens=4,
        partition="iid",
        out=str(out),
        max_length=32,
    )
    base.update(kw)
    return config_from_mapping(base)


def without_dropout(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0  # both ways then draw no random masks, so they can agree exactly
    return model.train()


def trained_adapter(model, rank=8, head=False):
    adapted = inject_nested_lora(model, rank, 16.0, train_head=head)
    adapted.reset_parameters(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # B = 0 would hide any error in B's own gradient path
        for p in adapted.adapter_parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return adapted


def secure_mean(updates, global_state):
    """The example-weighted mean of the updates' secure shares: what SecAgg+ reveals."""
    total = sum(u.num_examples for u in updates)
    shares = [secure_share(u, global_state) for u in updates]
    return weighted_sum(shares, [u.num_examples / total for u in updates])


def lora_update(client, rank, examples, seed, in_features, out_features):
    """A client update of random factors A (rank, in) and B (out, rank), one module ``m``."""
    from prelort.aggregation import ClientUpdate

    g = torch.Generator().manual_seed(seed)
    state = {
        "m.lora_a": torch.randn(rank, in_features, generator=g),
        "m.lora_b": torch.randn(out_features, rank, generator=g),
    }
    return ClientUpdate(client, state, rank, examples)


def ladder_run(adapted, data, config, objective=None):
    """A rank-8 client's local training over every row of ``data`` on the ladder 2/4/8."""
    from prelort.training.local import train_local
    from prelort.training.objective import PLAIN

    return train_local(
        adapted,
        data,
        list(range(len(data.labels))),
        "classification",
        0,
        8,
        (2, 4, 8),
        config,
        torch.Generator().manual_seed(3),
        PLAIN if objective is None else objective,
    )


def one_step(adapted, start, objective):
    """The state after one ``ladder_run`` step (8 rows, lr 1e-2) from ``start`` under ``objective``."""
    from prelort.adapters import get_state, set_state
    from prelort.training.local import LocalTrainingConfig

    set_state(adapted, start)
    ladder_run(
        adapted, token_rows(8), LocalTrainingConfig(steps=1, batch_size=8, lr=1e-2), objective
    )
    return get_state(adapted)


def token_rows(rows, seed=0):
    """``rows`` random 8-token classification examples labelled 0, 1, 0, 1, ..."""
    from prelort.data.encoding import EncodedSplit

    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(3, 120, (8,), generator=g).tolist() for _ in range(rows)]
    return EncodedSplit(ids, [n % 2 for n in range(rows)])


def finished_run(root, method, scores, eval_examples=300):
    """A finished run folder as simulate writes it, with ``scores`` per tier as examples.json."""
    run = root / f"{method}-seed0"
    run.mkdir(parents=True)
    config = SimulationConfig(method=method, eval_examples=eval_examples).to_dict()
    final = {tier: {"accuracy": sum(s) / len(s)} for tier, s in scores.items()}
    metrics = {"config": config, "client_ranks": [], "client_examples": [], "rounds": []}
    (run / "metrics.json").write_text(json.dumps({**metrics, "final": {"tiers": final}}))
    tiers = {tier: {"accuracy": s} for tier, s in scores.items()}
    (run / "examples.json").write_text(json.dumps({"tiers": tiers}))
    return run
