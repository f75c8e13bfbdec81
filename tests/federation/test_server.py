"""The server step: closed-form results on hand-built replies, and hostile replies left out."""

import math

import pytest
import torch

from prelort.aggregation import AggregationContext, aggregate_segmentwise, get_method
from prelort.aggregation.base import ClientUpdate
from prelort.federation import ClientReply, ServerRules, ServerState, server_step
from prelort.federation.secure_server import mean_of_shares, secure_server_step
from prelort.federation.server import initial_server_state
from prelort.training.objective import PLAIN

IN, OUT, R = 3, 2, 4
LADDER = (1, 2, 4)


def state(rank: int, value: float) -> dict[str, torch.Tensor]:
    return {
        "m.lora_a": torch.full((rank, IN), value),
        "m.lora_b": torch.full((OUT, rank), value),
        "head.weight": torch.full((2, 2), value),
    }


def reply(client: int, rank: int, value: float, examples: int = 1, **kw) -> ClientReply:
    return ClientReply(client, state(rank, value), rank, examples, 0.5, **kw)


def setup(method: str = "prelort", ranks=(1, 2, 4)) -> tuple[ServerState, ServerRules]:
    m = get_method(method)
    fresh = state(R, 0.0)
    context = AggregationContext(LADDER, 1.0, fresh)
    return initial_server_state(m, fresh, ranks), ServerRules.for_run(m, context, ranks)


def test_matches_the_rule_and_records_the_round():
    server, rules = setup()
    replies = [reply(0, 1, 1.0, 3), reply(1, 2, 2.0, 1)]
    outcome = server_step(server, [0, 1, 2], replies, rules)
    updates = [ClientUpdate(0, state(1, 1.0), 1, 3), ClientUpdate(1, state(2, 2.0), 2, 1)]
    expected = aggregate_segmentwise(server.global_state, updates, LADDER)
    for key, value in expected.items():
        assert torch.equal(outcome.server.global_state[key], value), key
    assert outcome.server.global_state["m.lora_a"][2:].eq(0).all()  # segment nobody sent: kept
    traffic = outcome.traffic
    assert traffic["round"] == 1 and outcome.server.round == 1
    assert traffic["clients"] == 2 and traffic["ranks"] == [1, 2] and traffic["dropped"] == [2]
    assert traffic["bytes_up"] == 4 * ((1 + 2) * (IN + OUT) + 2 * 4)
    # every sampled client was sent its prefix and the head, the dropped one included
    assert traffic["bytes_down"] == 4 * ((1 + 2 + 4) * (IN + OUT) + 3 * 4)
    assert [s["hi"] for s in traffic["segments"]] == [1, 2, 4]
    assert math.isclose(sum(s["share"] for s in traffic["segments"]), 1.0)
    assert outcome.train_loss == 0.5


def test_the_round_loss_is_the_mean_over_clients_that_trained():
    """A frozen client (lowest-alone's higher ranks) reports NaN; the round's loss is the others'."""
    server, rules = setup("lowest-alone")
    frozen = ClientReply(1, state(2, 0.0), 2, 1, math.nan)
    outcome = server_step(server, [0, 1], [reply(0, 1, 1.0), frozen], rules)
    assert outcome.train_loss == 0.5
    alone = server_step(server, [1], [frozen], rules)
    assert math.isnan(alone.train_loss)


BAD = {
    "nan": lambda: ClientReply(
        0, {**state(1, 1.0), "m.lora_a": torch.full((1, IN), math.nan)}, 1, 1, 0.1
    ),
    "rank above R": lambda: reply(2, 8, 1.0),
    "rank not the one sent": lambda: reply(0, 2, 1.0),
    "shape off its rank": lambda: ClientReply(1, state(1, 1.0), 2, 1, 0.1),
    "not sampled": lambda: reply(3, 1, 1.0),
    "zero examples": lambda: reply(0, 1, 1.0, 0),
    "nan examples": lambda: ClientReply(0, state(1, 1.0), 1, math.nan, 0.1),
    "bool examples": lambda: ClientReply(0, state(1, 1.0), 1, True, 0.1),
    "unknown key": lambda: ClientReply(
        0, {**state(1, 1.0), "x.lora_a": torch.ones(1, IN)}, 1, 1, 0.1
    ),
    "missing head": lambda: ClientReply(
        0, {k: v for k, v in state(1, 1.0).items() if k != "head.weight"}, 1, 1, 0.1
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_hostile_reply_is_rejected_and_never_touches_the_state(case):
    server, rules = setup()
    sampled = [0, 1, 2]
    before = {k: v.clone() for k, v in server.global_state.items()}
    outcome = server_step(server, sampled, [BAD[case]()], rules)
    assert outcome.traffic["clients"] == 0 and len(outcome.traffic["rejected"]) == 1
    assert outcome.traffic["rejected"][0]["reason"]
    for key, value in before.items():
        assert torch.equal(outcome.server.global_state[key], value), key
    assert math.isnan(outcome.train_loss)
    # the same hostile reply next to a good one: the good one alone is aggregated
    good = reply(1, 2, 2.0)
    mixed = server_step(server, sampled, [BAD[case](), good], rules)
    alone = server_step(server, sampled, [good], rules)
    for key, value in alone.server.global_state.items():
        assert torch.equal(mixed.server.global_state[key], value), key


def test_a_second_reply_from_one_client_is_rejected():
    server, rules = setup()
    outcome = server_step(server, [0], [reply(0, 1, 1.0), reply(0, 1, 9.0)], rules)
    assert outcome.traffic["clients"] == 1
    assert outcome.traffic["rejected"] == [
        {"client": 0, "reason": "a second reply from the same client"}
    ]
    assert outcome.server.global_state["m.lora_a"][0].eq(1.0).all()


def test_hetlora_prunes_a_quiet_tail_and_flora_merges():
    server, rules = setup("hetlora", ranks=(4, 4))
    outcome = server_step(
        server, [0, 1], [reply(0, 4, 1.0, tail_ratio=0.01), reply(1, 4, 1.0, tail_ratio=0.5)], rules
    )
    assert outcome.server.client_ranks == (3, 4)  # the pruned rank falls between the rungs
    assert outcome.traffic["tail_ratios"] == [0.01, 0.5]  # each reply's pruning signal, in order
    assert rules.allowed_ranks is None

    server, rules = setup("flora", ranks=(1, 2))
    assert server.global_state["m.merged"].shape == (OUT, IN)
    first = server_step(server, [0, 1], [reply(0, 1, 1.0), reply(1, 2, 1.0)], rules)
    assert first.server.memory == (1 + 2) * (IN + OUT)  # FLoRA's own part of the state
    assert first.server.global_state["m.merged"].abs().sum() > 0
    assert first.server.global_state["m.lora_b"].eq(0).all()  # clients restart from fresh adapters
    second = server_step(first.server, [0], [], rules)
    assert second.traffic["bytes_down"] == 4 * (4 + (1 + 2) * (IN + OUT))  # head + last stack


def test_method_hooks_default_to_the_plain_behaviour():
    plain, hetlora = get_method("zeropad"), get_method("hetlora")
    assert plain.next_rank(4, 0.0, LADDER) == 4 and plain.local_objective(8, [8], LADDER) == PLAIN
    assert plain.allowed_ranks(LADDER, [1, 2]) == {1, 2, 4}
    assert plain.initial_memory() is None
    objective = hetlora.local_objective(16, [16], LADDER)
    assert objective.tail == 4 and objective.gamma > 0
    assert hetlora.next_rank(2, 0.0, (2, 4)) == 2  # never below the smallest rung
    balanced = get_method("prelort-balanced").local_objective(4, [1, 4], LADDER)
    assert balanced.truncation_weights == {1: 0.5, 2: 1.0, 4: 1.0}
    assert not get_method("no-adapter").trains_adapter and get_method("prelort").trains_adapter


def secure_round(server, rules, replies, sampled=(0, 1, 2)):
    reports, mean, left = mean_of_shares(server, replies, bound=100.0)
    return secure_server_step(server, list(sampled), reports, mean, rules, left)


@pytest.mark.parametrize("method", ["prelort", "zeropad"])
def test_the_secure_step_gives_the_plain_step_from_the_mean_of_shares(method):
    server, rules = setup(method)
    replies = [reply(0, 1, 1.0, 3), reply(1, 2, 2.0, 1), reply(2, 4, -1.0, 2)]
    plain = server_step(server, [0, 1, 2], replies, rules)
    secure = secure_round(server, rules, replies)
    for key, value in plain.server.global_state.items():
        torch.testing.assert_close(secure.server.global_state[key], value, rtol=0, atol=1e-6)
    assert secure.traffic["ranks"] == [1, 2, 4] and secure.traffic["clients"] == 3
    assert secure.traffic["tail_ratios"] == plain.traffic["tail_ratios"] == [0.0, 0.0, 0.0]
    # every client sends its padded share and the indicators, as 64-bit masked integers
    assert secure.traffic["bytes_up"] == 3 * 8 * (R * (IN + OUT) + R + 2 * 2 + 1)


def test_a_report_that_lies_about_its_rank_refuses_the_whole_secure_round():
    server, rules = setup()
    replies = [reply(0, 1, 1.0), reply(1, 4, 2.0)]  # client 1 was sent the rank-2 prefix
    outcome = secure_round(server, rules, replies)
    assert outcome.server.global_state is server.global_state  # kept, untouched
    assert outcome.traffic["clients"] == 0
    reasons = [r["reason"] for r in outcome.traffic["rejected"]]
    assert len(reasons) == 2 and all("claims rank 4" in r for r in reasons)


def test_a_client_whose_share_is_not_finite_leaves_the_secure_sum():
    server, rules = setup()
    poisoned = ClientReply(
        0, {**state(1, 1.0), "m.lora_a": torch.full((1, IN), math.nan)}, 1, 1, 0.1
    )
    outcome = secure_round(server, rules, [poisoned, reply(1, 2, 2.0)])
    assert outcome.traffic["ranks"] == [2]
    assert torch.isfinite(outcome.server.global_state["m.lora_a"]).all()
    assert "left secure sum" in outcome.traffic["rejected"][0]["reason"]


def test_a_malformed_secure_sum_keeps_the_global_adapter():
    server, rules = setup()
    reports, mean, _ = mean_of_shares(server, [reply(0, 1, 1.0)], bound=100.0)
    mean["m.lora_b"] = mean["m.lora_b"][:, :2]
    outcome = secure_server_step(server, [0], reports, mean, rules)
    assert outcome.server.global_state is server.global_state
    assert "shape" in outcome.traffic["rejected"][0]["reason"]
