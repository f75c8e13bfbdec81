"""Putting nested LoRA layers into a ``transformers`` model by target module names.

Injection is kept apart from the layer (as PEFT does): this module walks a model, swaps each
targeted ``nn.Linear`` for a ``NestedLoRALinear`` and freezes everything else but the task head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from prelort.adapters.heads import tier_of
from prelort.adapters.layer import NestedLoRALinear
from prelort.device import autocast
from prelort.errors import ModelError

# Default targets per model family (``config.model_type``): the attention query and value
# projections, as in the LoRA paper and PEFT's defaults; Phi-3 fuses q, k and v into one layer.
FAMILY_TARGETS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "gemma",
            "gemma2",
            "gemma3_text",
            "phi",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "cohere",
        ),
        ("q_proj", "v_proj"),
    ),
    **dict.fromkeys(("phi3", "phimoe"), ("qkv_proj",)),
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra"), ("query", "value")),
}
# Otherwise: targets by the attention projection names a model uses.
DEFAULT_TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("q_proj", ("q_proj", "v_proj")),  # Llama-like
    ("query", ("query", "value")),  # BERT-like
    ("qkv_proj", ("qkv_proj",)),  # Phi-3-like
)
ALL_LINEAR = "all-linear"  # PEFT's spelling: every linear layer but the output and task heads


@dataclass
class NestedLoRAModel:
    """A model with nested LoRA layers injected.

    Attributes:
        model: the wrapped ``transformers`` model (modified in place).
        layers: the nested layers by their module name.
        head: trainable task-head parameters by name (empty for causal LMs); the model's own.
        max_rank: R, the global rank every client adapter is a prefix of.
        scale: the fixed LoRA multiplier (alpha / R by default).
        tier_heads: with per-tier heads, one copy of ``head`` per tier (see ``use_tier_heads``);
            empty when one head is shared by every tier.
        active_tier: the tier whose head the model uses now (None with a shared head).
        autocast_dtype: forwards run under autocast to this dtype (a 16-bit base on a GPU), or
            None (``prelort.models.Placement``).
        train_autocast_dtype: training steps run under autocast to this dtype instead (the
            ``train_dtype`` setting: a 16-bit step over a base kept in fp32), or None.
        eval_autocast_dtype: scoring forwards run under autocast to this dtype instead (the
            ``eval_dtype`` setting), or None.
    """

    model: nn.Module
    layers: dict[str, NestedLoRALinear]
    head: dict[str, nn.Parameter] = field(default_factory=dict)
    max_rank: int = 0
    scale: float = 1.0
    tier_heads: dict[int, dict[str, nn.Parameter]] = field(default_factory=dict)
    active_tier: int | None = None
    autocast_dtype: torch.dtype | None = None
    train_autocast_dtype: torch.dtype | None = None
    eval_autocast_dtype: torch.dtype | None = None

    @property
    def device(self) -> torch.device:
        """The device of the adapter (and of the model it is injected in)."""
        return next(iter(self.layers.values())).lora_a.device

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a scoring forward: ``eval_autocast_dtype`` where set, else
        autocast over a 16-bit GPU base, else nothing."""
        return autocast(self.device, self.eval_autocast_dtype or self.autocast_dtype)

    def train_autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of a training step: ``train_autocast_dtype`` where set."""
        return autocast(self.device, self.train_autocast_dtype or self.autocast_dtype)

    def set_active_rank(self, rank: int) -> None:
        """Truncate every nested layer to its first ``rank`` components (and use that tier's head)."""
        for layer in self.layers.values():
            layer.set_active_rank(min(rank, layer.rank))
        if self.tier_heads:
            self._install_head(tier_of(rank, sorted(self.tier_heads)))

    @contextmanager
    def truncations(self, ranks: Sequence[int], copy_size: int) -> Iterator[None]:
        """Run several truncations in one forward: ``len(ranks)`` copies of a batch stacked.

        Copy t (rows ``t * copy_size`` to ``(t + 1) * copy_size``) sees the adapter truncated to
        ``ranks[t]``: every layer runs at the largest rank and masks each row's components above
        its copy's rank, which gives the outputs and gradients of the separate truncated
        forwards while the frozen base runs one wide matmul instead of one per truncation.
        A shared head only: per-tier heads differ between copies.
        """
        with self.row_truncations([r for r in ranks for _ in range(copy_size)]):
            yield

    @contextmanager
    def row_truncations(self, row_ranks: Sequence[int]) -> Iterator[None]:
        """Within the block, row n of a batch sees the adapter truncated to ``row_ranks[n]``.

        Raises:
            ModelError: the model has per-tier heads (rows of different tiers need different
                heads, which one forward cannot give).
        """
        if self.tier_heads:
            raise ModelError("truncations in one batch need a shared head, not per-tier heads")
        top = max(row_ranks)
        device = self.device
        ranks_per_row = torch.tensor(list(row_ranks), device=device)  # (rows,)
        keep = torch.arange(top, device=device)[None, :] < ranks_per_row[:, None]  # (rows, top)
        try:
            for layer in self.layers.values():
                layer.set_active_rank(min(top, layer.rank))
                layer.rank_mask = keep.to(layer.lora_a.dtype)
            yield
        finally:
            for layer in self.layers.values():
                layer.rank_mask = None

    def use_tier_heads(self, tiers: Sequence[int] | None) -> None:
        """One head per tier (copies of the current head), or with None one shared head again."""
        if self.tier_heads:
            self._install_head(None)
        self.tier_heads = {}
        if tiers and self.head:
            self.tier_heads = {
                t: {n: nn.Parameter(p.detach().clone()) for n, p in self.head.items()}
                for t in sorted(set(tiers))
            }
            self._install_head(max(self.tier_heads))

    def _install_head(self, tier: int | None) -> None:
        """Point the model's head modules at the parameters of ``tier`` (None: the shared head)."""
        params = self.head if tier is None else self.tier_heads[tier]
        for name, param in params.items():
            owner, _, leaf = name.rpartition(".")
            setattr(self.model.get_submodule(owner) if owner else self.model, leaf, param)
        self.active_tier = tier

    def head_parameters(self) -> list[nn.Parameter]:
        """Every head parameter: the shared head, or all tiers' copies."""
        if self.tier_heads:
            return [p for tier in self.tier_heads.values() for p in tier.values()]
        return list(self.head.values())

    def adapter_parameters(self) -> list[nn.Parameter]:
        params: list[nn.Parameter] = []
        for layer in self.layers.values():
            params += [layer.lora_a, layer.lora_b]
        return params

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.adapter_parameters() + self.head_parameters()

    def reset_parameters(self, generator: torch.Generator) -> None:
        """A fresh rank-R adapter (A random, B zero, no merged term) and a fresh task head.

        Every tier's head starts as the same copy. Layers left holding a client's smaller rank are
        given back all R components first.
        """
        for layer in self.layers.values():
            if layer.rank != self.max_rank:
                layer.set_factors(
                    layer.lora_a.new_zeros(self.max_rank, layer.base.in_features),
                    layer.lora_b.new_zeros(layer.base.out_features, self.max_rank),
                )
            layer.set_active_rank(self.max_rank)
            layer.set_merged(None)
            layer.reset_parameters(generator)
        with torch.no_grad():
            for name, p in self.head.items():
                if name.endswith("bias"):
                    p.zero_()
                else:
                    draw = torch.empty(p.shape, dtype=p.dtype)  # on the CPU: the same everywhere
                    p.copy_(draw.normal_(0.0, 0.02, generator=generator))
                for tier in self.tier_heads.values():
                    tier[name].copy_(p)


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """The attention query/value projections of the model's family (or of its naming scheme).

    Raises:
        ModelError: an unknown family whose modules follow no known naming scheme.
    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if model_type in FAMILY_TARGETS and set(FAMILY_TARGETS[model_type]) <= leaf_names:
        return FAMILY_TARGETS[model_type]
    for marker, targets in DEFAULT_TARGETS:
        if marker in leaf_names:
            return targets
    raise ModelError(
        f"target_modules: no default for model family {model_type!r}; name its modules "
        "(e.g. --target-modules q_proj,v_proj) or use --target-modules all-linear"
    )


def _is_linear(module: nn.Module) -> bool:
    """An ``nn.Linear`` or a bitsandbytes 4/8-bit linear layer (those subclass it)."""
    return isinstance(module, nn.Linear)


def target_names(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """The full names of the modules to adapt: leaf names in ``targets``, or ``all-linear``.

    ``all-linear`` takes every linear layer except the output embedding (``lm_head``) and the
    task head, as PEFT does.

    Raises:
        ModelError: a target name no module has, or a match that is not a linear layer.
    """
    modules = dict(model.named_modules())
    if tuple(targets) == (ALL_LINEAR,):
        heads = {name.rpartition(".")[0] for name in find_head_parameters(model)}
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        return [
            name
            for name, module in modules.items()
            if _is_linear(module)
            and module is not output
            and name not in heads
            and not name.startswith("lm_head")
            and ".lora_" not in name
        ]
    leaves = {name.rsplit(".", 1)[-1] for name in modules}
    unknown = [t for t in targets if t not in leaves]
    if unknown:
        raise ModelError(
            f"target_modules: the model has no module named {', '.join(map(repr, unknown))}"
        )
    names = []
    for name, module in modules.items():
        if name.rsplit(".", 1)[-1] not in targets or isinstance(module, NestedLoRALinear):
            continue
        if not _is_linear(module):
            raise ModelError(
                f"target module {name!r} is a {type(module).__name__}, not an nn.Linear"
            )
        names.append(name)
    return names


def find_head_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters outside the pretrained backbone: the task head of a ``...ForSequenceClassification``.

    ``transformers`` models keep the backbone under ``base_model_prefix``; whatever lies outside
    it (``classifier.*`` for BERT, ``score.*`` for Llama) is the freshly initialised head.
    """
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        return {}
    heads = {
        name: p
        for name, p in model.named_parameters()
        if not name.startswith(prefix + ".") and not name.startswith("lm_head")
    }
    return heads


def inject_nested_lora(
    model: nn.Module,
    max_rank: int,
    alpha: float,
    target_modules: Sequence[str] | None = None,
    dropout: float = 0.0,
    train_head: bool = False,
    adapter_dtype: torch.dtype = torch.float32,
    head_dtype: torch.dtype | None = None,
) -> NestedLoRAModel:
    """Swap every targeted ``nn.Linear`` for a ``NestedLoRALinear`` of rank ``max_rank``.

    Args:
        model: a ``transformers`` model; modified in place.
        max_rank: R, the rank of the global nested adapter.
        alpha: LoRA alpha; the scale is ``alpha / max_rank`` at every active rank.
        target_modules: leaf module names to adapt, or ``("all-linear",)`` (None: the family's
            default, ``default_target_modules``).
        dropout: dropout on the adapter input.
        train_head: keep the task head trainable (sequence classification).
        adapter_dtype: dtype of the adapter factors.
        head_dtype: dtype of a trained head (None: the model's own).

    Returns:
        The injected model with handles on its layers and head.

    Raises:
        ModelError: no module matched the targets, or a match is not an ``nn.Linear``.
    """
    targets = tuple(target_modules) if target_modules else default_target_modules(model)
    for p in model.parameters():
        p.requires_grad_(False)
    scale = alpha / max_rank
    layers: dict[str, NestedLoRALinear] = {}
    for name in target_names(model, targets):
        module = model.get_submodule(name)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = NestedLoRALinear(module, max_rank, scale, dropout, adapter_dtype)
        setattr(parent, child, layer)
        layers[name] = layer
    if not layers:
        raise ModelError(f"no module of the model is named any of {list(targets)}")
    head = find_head_parameters(model) if train_head else {}
    for p in head.values():
        if head_dtype is not None:
            p.data = p.data.to(head_dtype)  # a trained head keeps fp32 master weights too
        p.requires_grad_(True)
    return NestedLoRAModel(model, layers, head, max_rank, scale)
