"""The SecAgg+ pieces of the Flower app, without the engine: a node's share, the server's round."""

import math
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType, Metadata
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat

from prelort.aggregation import AggregationContext, get_method
from prelort.aggregation.secure import secure_share, share_layout
from prelort.errors import AdapterError
from prelort.federation import ClientReply, ServerRules
from prelort.federation.plan import FederationPlan
from prelort.federation.server import initial_server_state
from prelort.flower.secure import SecurePrefixStrategy, encode_arrays, secure_reply

IN, OUT, R = 3, 2, 4


def adapter(rank: int, value: float) -> dict[str, torch.Tensor]:
    return {
        "m.lora_a": torch.full((rank, IN), value),
        "m.lora_b": torch.full((OUT, rank), value),
        "head.weight": torch.full((2, 2), value),
    }


def fit_message(prefix, client: int, round_index: int) -> Message:
    parameters, keys = encode_arrays(prefix)
    fitins = FitIns(parameters, {"client": client, "round": round_index, "keys": keys})
    # as a node receives it (an instruction built outside a run has no run id)
    metadata = Metadata(1, "m1", 0, 1, "", "1", time.time(), 600.0, MessageType.TRAIN)
    return Message(compat.fitins_to_recorddict(fitins, True), metadata=metadata)


def test_a_node_sends_its_padded_share_and_its_account():
    sent = adapter(2, 0.5)

    def train(prefix, client, round_index):
        assert torch.equal(prefix["m.lora_a"], sent["m.lora_a"]) and (client, round_index) == (1, 3)
        return ClientReply(client, adapter(2, 0.25), 2, 40, 0.7)

    reply = secure_reply(fit_message(sent, 1, 3), train, adapter(R, 0.0), bound=4.0)
    fitres = compat.recorddict_to_fitres(reply.content, keep_input=True)
    arrays = [np.asarray(a) for a in parameters_to_ndarrays(fitres.parameters)]
    layout = share_layout(adapter(R, 0.0))
    assert [(k, a.shape) for (k, _), a in zip(layout, arrays, strict=True)] == layout
    expected = secure_share(
        SimpleNamespace(state=adapter(2, 0.25), rank=2, num_examples=40), adapter(R, 0.0)
    )
    for (key, _), array in zip(layout, arrays, strict=True):
        assert np.array_equal(array, expected[key].numpy()), key
    assert fitres.num_examples == 40 and fitres.metrics["rank"] == 2


@pytest.mark.parametrize("value", [10.0, math.inf])
def test_a_node_whose_share_secagg_would_clip_or_poison_leaves_the_round(value):
    def train(prefix, client, round_index):
        return ClientReply(client, adapter(2, value), 2, 40, 0.7)

    with pytest.raises(AdapterError, match="leaves the secure round"):
        secure_reply(fit_message(adapter(2, 0.0), 0, 1), train, adapter(R, 0.0), bound=4.0)


def strategy():
    method = get_method("prelort")
    fresh = adapter(R, 0.0)
    ranks = (1, 2, 4)
    rules = ServerRules.for_run(method, AggregationContext((1, 2, 4), 1.0, fresh), ranks)
    plan = FederationPlan(
        client_rows=((0, 1), (2, 3), (4, 5)),
        client_ranks=ranks,
        per_round=3,
        seed=0,
        failure_rate=0.0,
    )
    rounds = []
    secure = SecurePrefixStrategy(
        plan,
        rules,
        initial_server_state(method, fresh, ranks),
        {10: 0, 11: 1, 12: 2},
        rounds.append,
    )
    secure._sampled, secure._sent, secure._pending = [0, 1, 2], {0, 1, 2}, True
    return secure, rounds


def fit_result(node: int, client: int, rank: int, mean) -> tuple:
    arrays = [mean[k].numpy() for k, _ in share_layout(adapter(R, 0.0))]
    metrics = {"client": client, "rank": rank, "loss": 0.5, "tail-ratio": 0.0}
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), 2, metrics)
    return SimpleNamespace(node_id=node), fitres


def test_the_server_divides_the_revealed_mean_by_each_index_holders():
    secure, rounds = strategy()
    shares = [
        secure_share(SimpleNamespace(state=adapter(r, v), rank=r), adapter(R, 0.0))
        for r, v in [(1, 1.0), (2, 2.0), (4, 4.0)]
    ]
    mean = {k: sum(s[k] for s in shares) / 3 for k in shares[0]}  # equal example counts
    results = [fit_result(10 + c, c, r, mean) for c, r in enumerate((1, 2, 4))]
    secure.aggregate_fit(1, results, [])
    a = secure.server.global_state["m.lora_a"][:, 0]
    assert torch.allclose(a, torch.tensor([7 / 3, 3.0, 4.0, 4.0]))  # segments 0, 1, 2-3
    assert rounds[0].traffic["ranks"] == [1, 2, 4] and secure.server.round == 1


def test_an_unreadable_report_refuses_the_round_and_a_halted_one_is_recorded():
    secure, rounds = strategy()
    mean = secure_share(SimpleNamespace(state=adapter(1, 1.0), rank=1), adapter(R, 0.0))
    good, bad = fit_result(10, 0, 1, mean), fit_result(11, 1, 2, mean)
    bad[1].metrics["rank"] = "two"
    before = secure.server.global_state
    secure.aggregate_fit(1, [good, bad], [RuntimeError("node 12 timed out")])
    assert secure.server.global_state is before and secure.server.round == 1
    reasons = [r["reason"] for r in rounds[0].traffic["rejected"]]
    assert any("timed out" in r for r in reasons)
    assert sum("secure sum refused" in r for r in reasons) == 2

    secure._pending = True  # round 2 configured, then SecAgg+ halted before aggregate_fit
    secure.close_halted_round()
    assert secure.server.round == 2 and secure.server.global_state is before
    assert all("halted" in r["reason"] for r in rounds[1].traffic["rejected"])
