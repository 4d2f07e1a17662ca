"""Loading transformers checkpoints: one declarative, strict loader for every crossenc encoder.

A model states how checkpoint names map onto its parameters (`CheckpointMapper`: prefix
renames, projections stacked into one matmul, tensors checkpoints ship that it has no use
for); the set of tensors it expects is then read from its own `named_parameters()` through
that mapping, and each tensor's shape from the layer that holds it (`checkpoint_shape`), so
nothing restates what the constructors build. Missing, unexpected and mis-shaped tensors are
reported together, by checkpoint name, before the model is used. Works with vLLM's parallel
layers (their weight loaders shard) and with the plain-torch stand-ins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from crossenc import compat
from crossenc.model_executor.layers import checkpoint_shape, default_weight_loader


@dataclass(frozen=True)
class StackedParam:
    """Checkpoint tensors `...<checkpoint>...` load as shard `shard` of the parameter
    `...<param>...` (the whole parameter for shard None: a rename), after `transform` if given
    (a layout change that keeps the shape, e.g. DeBERTa v1's per-head q/k/v rows)."""

    param: str  # e.g. ".qkv_proj."
    checkpoint: str  # e.g. ".query_proj."
    shard: str | int | None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


@dataclass(frozen=True)
class CheckpointMapper:
    # checkpoint prefix -> parameter prefix, first match wins (e.g. "pooler." -> "projector.";
    # "deberta." -> "" lets a bare encoder load a classifier checkpoint's backbone)
    prefixes: dict[str, str] = field(default_factory=dict)
    stacked: tuple[StackedParam, ...] = ()
    # checkpoint tensors the model has no use for (pre-training heads, position_ids buffers, an
    # absolute-position table a config leaves unused), by name prefix or suffix
    ignore_prefixes: tuple[str, ...] = ()
    ignore_suffixes: tuple[str, ...] = ()
    # (parameter suffix, shard) that checkpoints do not hold and that are zero, e.g. DeBERTa v1's
    # key bias in the stacked q/k/v bias
    zero_shards: tuple[tuple[str, str | int], ...] = ()

    def with_prefixes(self, prefixes: dict[str, str]) -> CheckpointMapper:
        """This mapping with more prefix renames, tried before its own."""
        return replace(self, prefixes={**prefixes, **self.prefixes})

    def to_param(self, name: str) -> tuple[str, StackedParam | None]:
        """checkpoint name -> (parameter name, the stacking rule that applies, if any)."""
        for ckpt, ours in self.prefixes.items():
            if name.startswith(ckpt):
                name = ours + name.removeprefix(ckpt)
                break
        for s in self.stacked:
            if s.checkpoint in name:
                return name.replace(s.checkpoint, s.param, 1), s
        return name, None

    def to_checkpoint(self, param_name: str) -> list[tuple[str, str | int | None]]:
        """parameter name -> the checkpoint names (and shards) that load it."""
        for ckpt, ours in self.prefixes.items():
            if ours and param_name.startswith(ours):
                param_name = ckpt + param_name.removeprefix(ours)
                break
        stacked = [s for s in self.stacked if s.param in param_name]
        if not stacked:
            return [(param_name, None)]
        return [(param_name.replace(s.param, s.checkpoint, 1), s.shard) for s in stacked]

    def ignored(self, name: str) -> bool:
        return name.startswith(self.ignore_prefixes) or name.endswith(self.ignore_suffixes)


def load_checkpoint(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                    mapper: CheckpointMapper) -> set[str]:
    """Load every parameter of `model` from `weights` (transformers names) through `mapper`.

    Raises one ValueError naming every missing, unexpected and mis-shaped tensor; returns the
    names of the parameters loaded."""
    params = dict(model.named_parameters())
    expected: dict[str, tuple[str, str | int | None]] = {}
    for param_name in params:
        for ckpt_name, shard in mapper.to_checkpoint(param_name):
            expected[ckpt_name] = (param_name, shard)
    by_param = {target: ckpt_name for ckpt_name, target in expected.items()}
    seen: set[str] = set()
    unexpected, misshaped = [], []
    for name, tensor in weights:
        param_name, rule = mapper.to_param(name)
        shard = rule.shard if rule is not None else None
        ckpt_name = by_param.get((param_name, shard))
        if ckpt_name is None:
            if not mapper.ignored(name):
                unexpected.append(name)
            continue
        seen.add(ckpt_name)
        module_name, _, leaf = param_name.rpartition(".")
        shape = checkpoint_shape(model.get_submodule(module_name), leaf, params[param_name], shard)
        if tuple(tensor.shape) != shape:
            misshaped.append(f"{ckpt_name}: checkpoint {tuple(tensor.shape)}, config expects {shape}")
            continue
        if rule is not None and rule.transform is not None:
            tensor = rule.transform(tensor)
        param = params[param_name]
        loader = getattr(param, "weight_loader", default_weight_loader)
        loader(param, tensor) if shard is None else loader(param, tensor, shard)
    for param_name, param in params.items():
        for suffix, shard in mapper.zero_shards:
            if param_name.endswith(suffix):
                module_name, _, leaf = param_name.rpartition(".")
                shape = checkpoint_shape(model.get_submodule(module_name), leaf, param, shard)
                zeros = torch.zeros(shape, dtype=param.dtype, device=param.device)
                getattr(param, "weight_loader", default_weight_loader)(param, zeros, shard)
    # Modules that keep tensors made from the weights (the encoder's position tables) drop them:
    # loaders write in place, which a tensor's version counter does not see.
    for module in model.modules():
        if callable(getattr(module, "weights_loaded", None)):
            module.weights_loaded()
    missing = sorted(set(expected) - seen)
    problems = [f"{what}: {names}" for what, names in (
        ("missing tensors", missing), ("unexpected tensors", unexpected), ("mis-shaped tensors", misshaped))
        if names]
    if problems:
        raise ValueError(f"{type(model).__name__} checkpoint does not match its config; " + "; ".join(problems))
    compat.plain_parameter_dispatch(model)  # loaded: ops on the weights skip vLLM's Python handler
    return {expected[n][0] for n in seen}
