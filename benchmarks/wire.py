"""Wire: bytes up and down per client per round, by formula and as serialised Flower messages.

LoRA shapes of SmolLM2-135M (30 layers; q 576 x 576 and v 192 x 576), 10 clients at ranks cycled
over 2/4/8/16. The formula is the methods' own traffic hooks (what metrics.json records); the
measured size is the ``ArrayRecord`` the Flower app sends, numpy headers included, in fp32 and in
the 16-bit wire formats. FLoRA's downlink is last round's stacked factors of every client.

    python -m benchmarks.wire [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from prelort.adapters.state import LORA_A, LORA_B, AdapterState, slice_to_rank
from prelort.aggregation import ClientUpdate, get_method
from prelort.aggregation.flexlora import stacked_factors
from prelort.aggregation.flora import stacked_numel
from prelort.aggregation.method import uplink_numel
from prelort.federation.wire import WIRE_DTYPES, wire_bytes
from prelort.flower.codec import to_arrays

LADDER = (2, 4, 8, 16)
METHODS = ("prelort", "zeropad", "hetlora", "flexlora", "flora")


def smollm2_state(layers: int, max_rank: int) -> AdapterState:
    g = torch.Generator().manual_seed(0)
    state: AdapterState = {}
    for i in range(layers):
        for proj, out_f in (("q_proj", 576), ("v_proj", 192)):
            name = f"model.layers.{i}.self_attn.{proj}"
            state[name + LORA_A] = torch.randn(max_rank, 576, generator=g)
            state[name + LORA_B] = torch.randn(out_f, max_rank, generator=g)
    return state


def serialised(state: AdapterState, wire: str) -> int:
    return sum(len(array.data) for array in to_arrays(state, wire).values())


def flora_stack(updates: Sequence[ClientUpdate]) -> AdapterState:
    """The stacked factors a FLoRA client downloads to rebuild last round's merge."""
    weights = torch.full((len(updates),), 1 / len(updates), dtype=torch.float64)
    out: AdapterState = {}
    for module in sorted({k[: -len(LORA_A)] for k in updates[0].state if k.endswith(LORA_A)}):
        b, a = stacked_factors(updates, module, weights, 1.0)
        out[module + LORA_B], out[module + LORA_A] = b.float(), a.float()
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers (CI proves it runs)")
    args = parser.parse_args(argv)
    layers, clients = (2, 4) if args.quick else (30, 10)
    global_state = smollm2_state(layers, max(LADDER))
    ranks = [LADDER[k % len(LADDER)] for k in range(clients)]
    updates = [ClientUpdate(k, slice_to_rank(global_state, r), r, 100) for k, r in enumerate(ranks)]
    stack = flora_stack(updates)
    print(f"## Wire: SmolLM2-135M LoRA shapes ({layers} layers, q and v), {clients} clients")
    print("MB per client per round, formula (measured serialised message)")
    print("| method | wire | " + " | ".join(f"up r{r}" for r in LADDER) + " | down r2 | down r16 |")
    print("|---|---|" + "---|" * (len(LADDER) + 2))
    for method in METHODS:
        hooks = get_method(method)
        for wire in WIRE_DTYPES:
            cells = []
            for r in LADDER:
                sent = slice_to_rank(global_state, r)
                cells.append(
                    f"{wire_bytes(uplink_numel(sent), wire) / 1e6:.3f} "
                    f"({serialised(sent, wire) / 1e6:.3f})"
                )
            for r in (min(LADDER), max(LADDER)):
                sent = slice_to_rank(global_state, r)
                numel = hooks.downlink_numel(sent, stacked_numel(updates))
                message = stack if method == "flora" else sent
                cells.append(
                    f"{wire_bytes(numel, wire) / 1e6:.3f} ({serialised(message, wire) / 1e6:.3f})"
                )
            print(f"| {method} | {wire} | " + " | ".join(cells) + " |")
    full = slice_to_rank(global_state, max(LADDER))
    ratio = serialised(full, "bfloat16") / serialised(full, "float32")
    print(f"bfloat16 / float32 serialised size at rank {max(LADDER)}: {ratio:.3f}")
    return {}


if __name__ == "__main__":
    main()
