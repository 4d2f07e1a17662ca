"""vLLM's tensor-parallel layers inside a vLLM engine, plain-torch stand-ins outside one.

The model files build on vLLM's parallel linear layers so that tensor parallelism splits
heads across ranks. The same model math must also run where no vLLM engine is set up (a
GPU machine without vLLM measuring the kernel, a test comparing with transformers): there
the stand-ins below are single-rank layers with the constructor arguments, `return_bias=False`
behaviour and `weight_loader(param, weight[, shard_id])` hooks the model code relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


class TorchLinear(nn.Linear):
    def __init__(self, input_size: int, output_size: int, bias: bool = True, *,
                 params_dtype: torch.dtype | None = None, **_tp_kwargs: Any):
        super().__init__(input_size, output_size, bias=bias, dtype=params_dtype)
        self.input_size, self.output_size = input_size, output_size  # as vLLM's layers name them


class TorchQKVLinear(TorchLinear):
    """q, k and v projections stacked in one matmul; checkpoints load them one by one."""

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int,
                 bias: bool = True, **kwargs: Any):
        self.q_size = head_size * total_num_heads
        super().__init__(hidden_size, 3 * self.q_size, bias, **kwargs)
        self.output_sizes = [self.q_size] * 3
        for param in self.parameters():
            param.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:  # q, k and v already stacked in the checkpoint
            param.data.copy_(loaded)
            return
        offset = "qkv".index(shard_id) * self.q_size
        param.data[offset: offset + self.q_size].copy_(loaded)


class TorchEmbedding(nn.Embedding):
    def __init__(self, num_embeddings: int, embedding_dim: int, *,
                 params_dtype: torch.dtype | None = None, **_tp_kwargs: Any):
        super().__init__(num_embeddings, embedding_dim, dtype=params_dtype)
        self.org_vocab_size = num_embeddings


@dataclass(frozen=True)
class ParallelLayers:
    column: type[nn.Module]
    row: type[nn.Module]
    qkv: type[nn.Module]
    vocab_embedding: type[nn.Module]
    tp_size: int


TORCH_LAYERS = ParallelLayers(TorchLinear, TorchLinear, TorchQKVLinear, TorchEmbedding, tp_size=1)


def get_parallel_layers(vllm_config: Any | None) -> ParallelLayers:
    """vLLM's parallel layers when built by a vLLM engine (`vllm_config` given), else torch's."""
    if vllm_config is None:
        return TORCH_LAYERS
    from crossenc import compat

    return ParallelLayers(**compat.parallel_linear_layers())


def default_weight_loader(param: torch.Tensor, loaded: torch.Tensor) -> None:
    param.data.copy_(loaded)


def checkpoint_shape(module: nn.Module, leaf: str, param: torch.Tensor,
                     shard: str | int | None = None) -> tuple[int, ...]:
    """The shape a checkpoint stores for `module`'s parameter `leaf` (shard `shard` of a stacked
    projection): the layer's whole size where tensor parallelism splits it or vLLM pads it
    (`VocabParallelEmbedding` rounds the vocabulary up), else the parameter's own. A parameter
    may state it as `checkpoint_shape`."""
    stated = getattr(param, "checkpoint_shape", None)
    if stated is not None:
        return tuple(stated)
    if leaf == "weight" and hasattr(module, "org_vocab_size"):
        return (module.org_vocab_size, module.embedding_dim)
    if leaf in ("weight", "bias") and hasattr(module, "input_size") and hasattr(module, "output_size"):
        out = module.output_size
        if shard is not None:
            out = module.output_sizes["qkv".index(shard) if isinstance(shard, str) else shard]
        return (out, module.input_size) if leaf == "weight" else (out,)
    return tuple(param.shape)
