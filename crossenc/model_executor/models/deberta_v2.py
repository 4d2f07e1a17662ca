"""DeBERTa-v2 / v3 / mDeBERTa for vLLM: embeddings, disentangled attention, encoder, heads.

Read top-down: the config is read once into `DebertaV2Arch` (and rejected there, naming the
field, if it cannot be served); embeddings -> attention -> layer -> encoder -> model; the
classification heads (`adapters.Encoder*` subclasses) at the bottom.

A batch is packed: the tokens of all sequences back to back, each sequence's positions
0..L-1. `PackedLayout` recovers the sequence boundaries from the positions, and attention
never crosses them. The module runs inside a vLLM engine (vLLM's tensor-parallel layers,
heads split across ranks) and without vLLM (plain torch layers), with the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.activations import ACT2FN

from crossenc import compat
from crossenc.kernels.disentangled_attention import (
    attention_scale,
    kernel_supports,
    query_tile_rows,
    query_tiles,
    relative_position_index,
    saturation_distance,
)
from crossenc.model_executor.layers import ParallelLayers, get_parallel_layers
from crossenc.model_executor.layers.cpu_memory import release_freed_memory
from crossenc.model_executor.layers.dense_gelu import dense_act
from crossenc.model_executor.layers.layernorm import add_layer_norm
from crossenc.model_executor.layers.packed_layout import PackedLayout, packed_attention
from crossenc.model_executor.models.adapters import EncoderForSequenceClassification, EncoderForTokenClassification
from crossenc.model_executor.models.interfaces import SupportsEmbedding
from crossenc.model_executor.models.utils import CheckpointMapper, StackedParam, load_checkpoint

POS_ATT_TYPES = ("c2p", "p2c")


class UnsupportedConfigError(ValueError):
    """A DeBERTa config crossenc cannot serve with numbers equal to transformers'."""


def _act(config: Any, field: str, default: str) -> str:
    name = getattr(config, field, None) or default
    if not isinstance(name, str) or name not in ACT2FN:
        raise UnsupportedConfigError(f"{field}={name!r} is not an activation transformers knows")
    return name


@dataclass(frozen=True)
class DebertaV2Arch:
    """Everything the model reads from a DebertaV2Config, read once and validated."""

    vocab_size: int
    hidden_size: int
    embedding_size: int
    num_layers: int
    num_heads: int
    head_size: int
    intermediate_size: int
    hidden_act: str
    layer_norm_eps: float
    max_position_embeddings: int
    position_biased_input: bool
    type_vocab_size: int
    relative_attention: bool
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    position_buckets: int
    max_relative_positions: int
    att_span: int
    norm_rel_ebd: bool
    conv_kernel_size: int
    conv_groups: int
    conv_act: str
    pooler_hidden_size: int
    pooler_hidden_act: str

    @property
    def scale_factor(self) -> int:
        # transformers counts c2p/p2c in the scale even when relative_attention is off.
        return 1 + len(self.pos_att_type)

    @property
    def c2p(self) -> bool:
        return self.relative_attention and "c2p" in self.pos_att_type

    @property
    def p2c(self) -> bool:
        return self.relative_attention and "p2c" in self.pos_att_type

    @classmethod
    def from_config(cls, config: Any) -> DebertaV2Arch:
        hidden, heads = config.hidden_size, config.num_attention_heads
        if hidden % heads:
            raise UnsupportedConfigError(
                f"hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
        head_size = getattr(config, "attention_head_size", None) or hidden // heads
        if head_size * heads != hidden:
            # transformers' attention output projection is hidden_size x hidden_size.
            raise UnsupportedConfigError(
                f"attention_head_size={head_size} x num_attention_heads={heads} != hidden_size={hidden}")
        pos_att_type = config.pos_att_type or []
        if isinstance(pos_att_type, str):
            pos_att_type = pos_att_type.lower().split("|")
        pos_att_type = tuple(t.strip() for t in pos_att_type if t.strip())
        unknown = [t for t in pos_att_type if t not in POS_ATT_TYPES]
        if unknown:
            raise UnsupportedConfigError(
                f"pos_att_type={config.pos_att_type!r}: {unknown} not among {list(POS_ATT_TYPES)}")
        relative = bool(getattr(config, "relative_attention", False))
        buckets = getattr(config, "position_buckets", -1)
        max_rel = getattr(config, "max_relative_positions", -1)
        if max_rel < 1:
            max_rel = config.max_position_embeddings
        kernel = getattr(config, "conv_kernel_size", 0) or 0
        if kernel and kernel % 2 == 0:
            raise UnsupportedConfigError(
                f"conv_kernel_size={kernel}: an even kernel changes the sequence length in transformers")
        pooler_hidden = getattr(config, "pooler_hidden_size", None) or hidden
        if pooler_hidden != hidden:
            raise UnsupportedConfigError(
                f"pooler_hidden_size={pooler_hidden} != hidden_size={hidden}: transformers' "
                "ContextPooler feeds hidden_size features into a pooler_hidden_size projection")
        norm_rel_ebd = [x.strip() for x in str(getattr(config, "norm_rel_ebd", "none")).lower().split("|")]
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=hidden,
            embedding_size=getattr(config, "embedding_size", None) or hidden,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            head_size=head_size,
            intermediate_size=config.intermediate_size,
            hidden_act=_act(config, "hidden_act", "gelu"),
            layer_norm_eps=config.layer_norm_eps,
            max_position_embeddings=config.max_position_embeddings,
            position_biased_input=bool(getattr(config, "position_biased_input", True)),
            type_vocab_size=getattr(config, "type_vocab_size", 0) or 0,
            relative_attention=relative,
            pos_att_type=pos_att_type,
            share_att_key=bool(getattr(config, "share_att_key", False)),
            position_buckets=buckets,
            max_relative_positions=max_rel,
            att_span=buckets if buckets > 0 else max_rel,
            norm_rel_ebd="layer_norm" in norm_rel_ebd,
            conv_kernel_size=kernel,
            conv_groups=getattr(config, "conv_groups", 1) or 1,
            conv_act=_act(config, "conv_act", "tanh"),
            pooler_hidden_size=pooler_hidden,
            pooler_hidden_act=_act(config, "pooler_hidden_act", "gelu"),
        )


class DebertaV2Embeddings(nn.Module):
    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = "",
                 norm_cls: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        e = arch.embedding_size
        self.word_embeddings = layers.vocab_embedding(arch.vocab_size, e, prefix=f"{prefix}.word_embeddings")
        self.position_embeddings = (
            nn.Embedding(arch.max_position_embeddings, e) if arch.position_biased_input else None)
        self.token_type_embeddings = nn.Embedding(arch.type_vocab_size, e) if arch.type_vocab_size else None
        self.embed_proj = nn.Linear(e, arch.hidden_size, bias=False) if e != arch.hidden_size else None
        self.LayerNorm = norm_cls(arch.hidden_size, eps=arch.layer_norm_eps)

    def forward(self, input_ids, positions, token_type_ids=None, inputs_embeds=None) -> torch.Tensor:
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(positions)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(positions)
            x = x + self.token_type_embeddings(token_type_ids[: x.shape[0]].long())
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        return self.LayerNorm(x)


class DebertaV2SelfAttention(nn.Module):
    """q, k and v in one stacked matmul, the layer's position tables, the disentangled attention op."""

    pos_key_bias = True  # DeBERTa v1's c2p projection has none

    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = ""):
        super().__init__()
        self.arch = arch
        if arch.num_heads % layers.tp_size:
            raise UnsupportedConfigError(
                f"num_attention_heads={arch.num_heads} does not split across tensor_parallel_size={layers.tp_size}")
        self.num_heads = arch.num_heads // layers.tp_size
        self.head_size = arch.head_size
        local = self.num_heads * self.head_size
        self.qkv_proj = layers.qkv(arch.hidden_size, arch.head_size, arch.num_heads, bias=True,
                                   return_bias=False, prefix=f"{prefix}.qkv_proj")
        self.q_size = local
        separate = arch.relative_attention and not arch.share_att_key
        column = dict(bias=True, gather_output=False, return_bias=False)
        self.pos_key_proj = (layers.column(arch.hidden_size, arch.hidden_size, prefix=f"{prefix}.pos_key_proj",
                                           **{**column, "bias": self.pos_key_bias}) if separate and arch.c2p else None)
        self.pos_query_proj = (layers.column(arch.hidden_size, arch.hidden_size,
                                             prefix=f"{prefix}.pos_query_proj", **column)
                               if separate and arch.p2c else None)
        self.scale = attention_scale(arch.head_size, arch.scale_factor)

    def position_tables(self, rel_embeddings: torch.Tensor | None):
        """pos_key / pos_query [2S, H, D] for this layer: once per batch, not per sequence."""
        if rel_embeddings is None:
            return None, None
        shape = (rel_embeddings.shape[0], self.num_heads, self.head_size)
        if self.arch.share_att_key:
            pos_q, pos_k, _ = self.qkv_proj(rel_embeddings).split(self.q_size, dim=-1)
        else:
            pos_k = self.pos_key_proj(rel_embeddings) if self.pos_key_proj is not None else None
            pos_q = self.pos_query_proj(rel_embeddings) if self.pos_query_proj is not None else None
        pos_k = pos_k.view(shape) if self.arch.c2p else None
        pos_q = pos_q.view(shape) if self.arch.p2c else None
        return pos_k, pos_q

    def forward(self, x, tables) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).view(x.shape[0], 3, self.num_heads, self.head_size).unbind(1)
        pos_key, pos_query = tables  # `position_tables`, made by the encoder
        # Strided views of the stacked projection: the op takes any token and head stride. The
        # sequences and position rows are the active PackedLayout's.
        out = packed_attention(q, k, v, pos_key, pos_query, self.scale)
        return out.reshape(x.shape[0], self.q_size)


class DebertaV2Output(nn.Module):
    """A layer's output block: row-parallel dense, then LayerNorm(dense(x) + residual)."""

    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = "",
                 norm_cls: type[nn.Module] = nn.LayerNorm, in_size: int | None = None):
        super().__init__()
        self.dense = layers.row(in_size or arch.intermediate_size, arch.hidden_size, bias=True,
                                input_is_parallel=True, return_bias=False, prefix=f"{prefix}.dense")
        self.LayerNorm = norm_cls(arch.hidden_size, eps=arch.layer_norm_eps)

    def forward(self, x, residual):
        return add_layer_norm(self.dense(x), residual, self.LayerNorm)


class DebertaV2SelfOutput(DebertaV2Output):
    """The attention's output block: the same over the attention's hidden_size outputs."""

    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = "",
                 norm_cls: type[nn.Module] = nn.LayerNorm):
        super().__init__(arch, layers, prefix, norm_cls, in_size=arch.hidden_size)


class DebertaV2Attention(nn.Module):
    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = "", *,
                 self_attention_cls: type[nn.Module], norm_cls: type[nn.Module]):
        super().__init__()
        self.self = self_attention_cls(arch, layers, prefix=f"{prefix}.self")
        self.output = DebertaV2SelfOutput(arch, layers, prefix=f"{prefix}.output", norm_cls=norm_cls)

    def forward(self, x, tables):
        return self.output(self.self(x, tables), x)


class DebertaV2Intermediate(nn.Module):
    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = ""):
        super().__init__()
        self.dense = layers.column(arch.hidden_size, arch.intermediate_size, bias=True, gather_output=False,
                                   return_bias=False, prefix=f"{prefix}.dense")
        self.act = ACT2FN[arch.hidden_act]

    def forward(self, x):
        return dense_act(x, self.dense, self.act)


class DebertaV2Layer(nn.Module):
    def __init__(self, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = "", *,
                 self_attention_cls: type[nn.Module], norm_cls: type[nn.Module]):
        super().__init__()
        self.attention = DebertaV2Attention(arch, layers, prefix=f"{prefix}.attention",
                                            self_attention_cls=self_attention_cls, norm_cls=norm_cls)
        self.intermediate = DebertaV2Intermediate(arch, layers, prefix=f"{prefix}.intermediate")
        self.output = DebertaV2Output(arch, layers, prefix=f"{prefix}.output", norm_cls=norm_cls)

    def forward(self, x, tables):
        x = self.attention(x, tables)
        return self.output(self.intermediate(x), x)


class DebertaV2ConvLayer(nn.Module):
    """DeBERTa-v2's convolution branch after the first layer, per sequence with zero padding.

    Each token's k neighbours are gathered from the packed batch and zeroed where they fall
    outside its sequence, then one grouped matmul applies the Conv1d weight.
    """

    def __init__(self, arch: DebertaV2Arch):
        super().__init__()
        h, k = arch.hidden_size, arch.conv_kernel_size
        self.conv = nn.Conv1d(h, h, k, padding=(k - 1) // 2, groups=arch.conv_groups)
        self.LayerNorm = nn.LayerNorm(h, eps=arch.layer_norm_eps)
        self.act = ACT2FN[arch.conv_act]

    def forward(self, x, residual, seq_ids):
        num_tokens, channels = x.shape
        k, groups = self.conv.kernel_size[0], self.conv.groups
        offsets = torch.arange(k, device=x.device) - (k - 1) // 2
        neighbour = torch.arange(num_tokens, device=x.device)[:, None] + offsets  # [T, k]
        inside = (neighbour >= 0) & (neighbour < num_tokens)
        neighbour = neighbour.clamp(0, num_tokens - 1)
        inside &= seq_ids[neighbour] == seq_ids[:, None]
        windows = x[neighbour] * inside[..., None]  # [T, k, C]
        windows = windows.view(num_tokens, k, groups, channels // groups)
        weight = self.conv.weight.view(groups, channels // groups, channels // groups, k)
        out = torch.einsum("tkgi,goik->tgo", windows, weight).reshape(num_tokens, channels)
        return self.LayerNorm(residual + self.act(out + self.conv.bias))


class DebertaV2Encoder(nn.Module):
    """The layers, on tensors only (what vLLM's torch.compile takes, CROSSENC_TORCH_COMPILE=1):
    the model lays the batch out (`lay_out`) and makes the layout active around the call."""

    def __init__(self, *, arch: DebertaV2Arch, layers: ParallelLayers, prefix: str = "",
                 self_attention_cls: type[nn.Module] = DebertaV2SelfAttention,
                 norm_cls: type[nn.Module] = nn.LayerNorm):
        super().__init__()
        self.arch = arch
        self.layer = nn.ModuleList(
            DebertaV2Layer(arch, layers, prefix=f"{prefix}.layer.{i}", self_attention_cls=self_attention_cls,
                           norm_cls=norm_cls)
            for i in range(arch.num_layers))
        self.rel_embeddings = nn.Embedding(2 * arch.att_span, arch.hidden_size) if arch.relative_attention else None
        self.LayerNorm = norm_cls(arch.hidden_size, eps=arch.layer_norm_eps) if arch.norm_rel_ebd else None
        self.conv = DebertaV2ConvLayer(arch) if arch.conv_kernel_size else None
        self._rel_index_cache: dict[tuple[int, str], tuple[torch.Tensor, int]] = {}
        # (the weights' identity, every layer's position tables): `position_tables`
        self._tables: tuple[tuple, list] | None = None
        self._table_params: list[dict] | None = None

    def _relative_position_index(self, max_seqlen: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """rel_index on `device` and its `saturation_distance`, made once per length bound and
        device on the host: with a bounded layout, every forward reuses them."""
        key = (max_seqlen, str(device))
        if key not in self._rel_index_cache:
            if len(self._rel_index_cache) >= 64:
                self._rel_index_cache.clear()
            arch = self.arch
            rel_index = relative_position_index(
                max_seqlen, arch.position_buckets, arch.max_relative_positions, arch.att_span)
            self._rel_index_cache[key] = rel_index.to(device), saturation_distance(rel_index)
        return self._rel_index_cache[key]

    def lay_out(self, layout: PackedLayout, x: torch.Tensor) -> PackedLayout:
        """What every layer's attention reads besides the sequences, made once per forward: the
        position rows, and the CUDA kernel's query tiles."""
        if self.rel_embeddings is not None:
            layout.rel_index, layout.far = self._relative_position_index(layout.max_seqlen, x.device)
        else:
            layout.rel_index = torch.zeros(1, dtype=torch.long, device=x.device)
        if x.is_cuda and kernel_supports(self.arch.head_size, x.dtype):
            rows = query_tile_rows(self.arch.head_size, x.dtype, layout.max_seqlen, x.device)
            layout.query_tiles = query_tiles(layout.cu_seqlens, rows)
        return layout

    def position_tables(self) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
        """Every layer's pos_key / pos_query ([2S, H, D] or None). They depend on the weights
        alone: at inference (no autograd, not being traced) they are made once and reused while
        the weights they come from stay where they are (`weights_loaded` drops them), rather than
        recomputed by every forward (a [2S, hidden] product per layer: on 2 CPU cores 11 ms a
        layer of v3-base, more than a small batch's attention)."""
        if self.rel_embeddings is None:
            return [(None, None)] * len(self.layer)
        cache = not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        if cache and self._table_params is None:  # the modules' parameter slots, gathered once
            sources = [self.rel_embeddings, self.LayerNorm, *(layer.attention.self for layer in self.layer)]
            self._table_params = [m._parameters for source in sources if source is not None for m in source.modules()]
        # (Parameters made under inference_mode have no version counter; they cannot be edited
        # in place outside it either. The slots are read each time: a parameter replaced in its
        # module changes the key too. Walking them is a fifth of `parameters()`'s host time.)
        key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version, p.dtype, p.device)
                    for params in self._table_params for p in params.values() if p is not None) if cache else None
        if key is not None and self._tables is not None and self._tables[0] == key:
            return self._tables[1]
        rel_embeddings = self.rel_embeddings.weight
        if self.LayerNorm is not None:
            rel_embeddings = self.LayerNorm(rel_embeddings)
        tables = [layer.attention.self.position_tables(rel_embeddings) for layer in self.layer]
        if key is not None:  # own copies: views would hold every layer's whole projection (v included)
            tables = [tuple(None if t is None else t.contiguous() for t in pair) for pair in tables]
            self._tables = (key, tables)
        return tables

    def weights_loaded(self) -> None:
        """Drop what was made from the weights: a loader writes them in place (`load_checkpoint`)."""
        self._tables = self._table_params = None

    def forward(self, x, seq_ids) -> torch.Tensor:
        tables = self.position_tables()
        embedding_output = x
        for i, layer in enumerate(self.layer):
            x = layer(x, tables[i])
            if i == 0 and self.conv is not None:
                x = self.conv(embedding_output, x, seq_ids)
        return x


class DebertaV2ContextPooler(nn.Module):
    """transformers' ContextPooler (`pooler.dense`): first token -> dense -> activation."""

    def __init__(self, arch: DebertaV2Arch, dtype: torch.dtype | None = None):
        super().__init__()
        self.dense = nn.Linear(arch.pooler_hidden_size, arch.pooler_hidden_size, dtype=dtype)
        self.act = ACT2FN[arch.pooler_hidden_act]

    def forward(self, x):
        return self.act(self.dense(x))


class DebertaV2Model(SupportsEmbedding, nn.Module):
    """The DeBERTa-v2 encoder; served on its own as an embedding model.

    `forward(input_ids, positions)` takes a packed batch and returns hidden states [T, hidden].
    """

    # transformers' attribute of the backbone in its head models and checkpoints
    base_model_prefix = "deberta"
    # What a DeBERTa family puts into the encoder: its attention and norm blocks.
    self_attention_cls: type[nn.Module] = DebertaV2SelfAttention
    norm_cls: type[nn.Module] = nn.LayerNorm
    # transformers' names: q, k and v load into one stacked matmul; published checkpoints also
    # hold pre-training heads, position_ids buffers and (v3) an absolute-position table the
    # config leaves unused.
    checkpoint_mapper = CheckpointMapper(
        prefixes={"deberta.": ""},
        stacked=tuple(StackedParam(".qkv_proj.", f".{name}_proj.", shard)
                      for name, shard in (("query", "q"), ("key", "k"), ("value", "v"))),
        ignore_prefixes=("lm_predictions.", "mask_predictions.", "cls."),
        ignore_suffixes=("position_ids", "embeddings.position_embeddings.weight"),
    )

    def __init__(self, *, vllm_config: Any = None, prefix: str = "", config: Any = None,
                 with_pooler: bool = True):
        super().__init__()
        if config is None:
            config = vllm_config.model_config.hf_config
        self.config = config
        self.arch = self.read_config(config)
        self.in_vllm = vllm_config is not None
        # On a GPU in vLLM, sequence boundaries are laid out within vLLM's limits (max_num_seqs
        # requests + one group of padding rows, max_model_len tokens each): no host sync. (Head
        # sizes the Triton kernel does not take run the torch reference, with exact layouts.)
        bounded = vllm_config is not None and kernel_supports(self.arch.head_size)
        self.layout_bounds = {} if not bounded else dict(
            max_seqs=vllm_config.scheduler_config.max_num_seqs + 1,
            max_seqlen=vllm_config.model_config.max_model_len)
        layers = get_parallel_layers(vllm_config)
        self.saw_pair_positions = False
        self.embeddings = DebertaV2Embeddings(self.arch, layers, prefix=f"{prefix}.embeddings",
                                              norm_cls=self.norm_cls)
        encoder_cls, compile_args = DebertaV2Encoder, {}
        self.graph_tokens, self._graph_inputs = 0, None
        if self.in_vllm and compat.torch_compile_enabled():  # CROSSENC_TORCH_COMPILE=1
            encoder_cls = compat.torch_compiled(DebertaV2Encoder, x=0, seq_ids=0)
            compile_args = dict(vllm_config=vllm_config)
            # Where vLLM captures CUDA graphs, they hold the pieces between the attention ops.
            compat.split_compiled_graph_at(vllm_config, "crossenc::packed_disentangled_attention")
            self.graph_tokens = compat.cudagraph_max_tokens(vllm_config)
        self.encoder = encoder_cls(arch=self.arch, layers=layers, prefix=f"{prefix}.encoder",
                                   self_attention_cls=self.self_attention_cls, norm_cls=self.norm_cls,
                                   **compile_args)
        if with_pooler and self.in_vllm:
            self.pooler = compat.embedding_pooler(vllm_config)

    @classmethod
    def read_config(cls, config: Any) -> DebertaV2Arch:
        return DebertaV2Arch.from_config(config)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embeddings.word_embeddings(input_ids)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None,
                token_type_ids=None, pair_positions=None, num_pair_seqs=None) -> torch.Tensor:
        bounds = self.layout_bounds if positions.is_cuda else {}
        self.saw_pair_positions = pair_positions is not None
        if pair_positions is not None:  # packed requests (`pair_packing`): positions restart at every pair
            positions = positions.clone()
            n = min(pair_positions.shape[0], positions.shape[0])
            positions[:n] = pair_positions[:n]
            if bounds and num_pair_seqs is not None:  # the step's sequences, and vLLM's padding rows
                bounds = {**bounds, "max_seqs": num_pair_seqs + 1}
        padding = compat.current_padding_mask() if self.in_vllm else None
        layout = PackedLayout.from_positions(positions, padding, **bounds)
        x = self.embeddings(input_ids, positions, token_type_ids, inputs_embeds)
        with self.encoder.lay_out(layout, x).active():
            x = self.encoder(*self._encoder_inputs(x, layout.seq_ids))
        if self.in_vllm and not x.is_cuda:  # a server's memory stays bounded (cpu_memory)
            release_freed_memory()
        return x

    def _encoder_inputs(self, x: torch.Tensor, seq_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled encoder's pieces replay from CUDA graphs for batches of up to `graph_tokens`
        tokens, reading their inputs where they were at capture. vLLM's own models take theirs from
        the runner's persistent buffers; the embeddings' output is new every forward, so it (and
        the sequence ids) are copied into buffers made once."""
        n = x.shape[0]
        if not 0 < n <= self.graph_tokens:
            return x, seq_ids
        if self._graph_inputs is None:
            self._graph_inputs = (x.new_empty(self.graph_tokens, x.shape[1]), seq_ids.new_empty(self.graph_tokens))
        static_x, static_ids = self._graph_inputs
        static_x[:n].copy_(x)
        static_ids[:n].copy_(seq_ids)
        return static_x[:n], static_ids[:n]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Load a transformers DebertaV2Model checkpoint; names may carry a `deberta.` prefix."""
        return load_checkpoint(self, weights, self.checkpoint_mapper)


class DebertaV2ForSequenceClassification(EncoderForSequenceClassification):
    """Rerankers (one label: vLLM's score), NLI, zero-shot and other classifiers."""

    base_cls = DebertaV2Model
    projector_cls = DebertaV2ContextPooler


class DebertaV2ForTokenClassification(EncoderForTokenClassification):
    """NER / PII taggers: one row of logits per token."""

    base_cls = DebertaV2Model
