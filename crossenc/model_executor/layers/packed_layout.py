"""Where the sequences of a packed batch begin and end, computed once per forward, and the
attention that reads them.

A model's forward builds its `PackedLayout` eagerly and makes it the current one (`active`)
while its layers run; each attention layer reads it (`packed_attention`). The layers thus take
tensors only: under torch.compile the attention is one custom op that reads the layout when it
runs, so a compiled graph holds no sequence boundary, length bound or position index of the
batch it was traced with (as vLLM's own attention reads its metadata from the forward context).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from crossenc.kernels.disentangled_attention import attention_impl


@dataclass
class PackedLayout:
    """Sequence boundaries of a packed batch, computed once per forward.

    Exact (the default): `cu_seqlens` holds one entry per sequence and `max_seqlen` is the
    longest one, read back to the host. Bounded (`max_seqs` and `max_seqlen` given, as vLLM on
    a GPU does from its scheduler limits): every shape comes from those bounds and the number
    of tokens, nothing is read back, so the forward neither waits for the GPU nor changes
    shape with the batch's contents (torch.compile, CUDA graphs). `cu_seqlens` then has
    `max_seqs + 1` entries, the unused ones equal to the token count (empty sequences), and
    `max_seqlen` is the bound.
    """

    cu_seqlens: torch.Tensor  # int32 [B + 1]
    max_seqlen: int
    seq_ids: torch.Tensor  # [T]: which sequence each token belongs to
    # the CUDA attention kernel's query tiles (`query_tiles`), made once per forward for every layer
    query_tiles: torch.Tensor | None = None
    # ... and the distance from which the position rows saturate (`saturation_distance`)
    far: int | None = None
    # the position-table row of each distance (`relative_position_index`), made by the model
    rel_index: torch.Tensor | None = None

    @contextmanager
    def active(self) -> Iterator[PackedLayout]:
        """The layout `packed_attention` reads while the block runs."""
        previous = _current[0]
        _current[0] = self
        try:
            yield self
        finally:
            _current[0] = previous

    @staticmethod
    def current() -> PackedLayout:
        layout = _current[0]
        if layout is None:
            raise RuntimeError("crossenc: the attention ran outside its model's forward (no PackedLayout is active)")
        return layout

    @classmethod
    def from_positions(cls, positions: torch.Tensor, is_padding: torch.Tensor | None = None, *,
                       max_seqs: int | None = None, max_seqlen: int | None = None) -> PackedLayout:
        num_tokens = positions.shape[0]
        # A sequence starts where its positions restart at 0. The padding rows vLLM adds to a
        # batch (after the real tokens) form one sequence of their own, whatever stale
        # positions they hold.
        starts = positions == 0
        if is_padding is not None:
            pad = is_padding[:num_tokens]
            pad_start = pad & ~torch.cat([pad.new_zeros(1), pad[:-1]])
            starts = (starts & ~pad) | pad_start
        starts[:1] = True
        seq_ids = torch.cumsum(starts, 0) - 1
        if max_seqs is None or max_seqlen is None:
            first = starts.nonzero().flatten()
            end = torch.tensor([num_tokens], device=positions.device)
            cu_seqlens = torch.cat([first, end]).to(torch.int32)
            longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
            return cls(cu_seqlens, longest, seq_ids)
        num_seqs = max(1, min(max_seqs, num_tokens))
        tokens = torch.arange(num_tokens, device=positions.device)
        cu_seqlens = torch.full((num_seqs + 1,), num_tokens, dtype=torch.long, device=positions.device)
        cu_seqlens.scatter_reduce_(0, seq_ids.clamp(max=num_seqs - 1), tokens, "amin")
        return cls(cu_seqlens.to(torch.int32), max_seqlen, seq_ids)


_current: list[PackedLayout | None] = [None]


def _attend(q, k, v, pos_key, pos_query, scale: float, out=None) -> torch.Tensor:
    layout = PackedLayout.current()
    return attention_impl(q, k, v, layout.cu_seqlens, layout.max_seqlen, pos_key, pos_query, layout.rel_index,
                          scale, layout.query_tiles, layout.far, out=out)


@torch.library.custom_op("crossenc::packed_disentangled_attention", mutates_args=("output",))
def packed_disentangled_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                     pos_key: torch.Tensor | None, pos_query: torch.Tensor | None,
                                     output: torch.Tensor, scale: float) -> None:
    _attend(q, k, v, pos_key, pos_query, scale, out=output)


@packed_disentangled_attention_op.register_fake
def _(q, k, v, pos_key, pos_query, output, scale):
    return None


def packed_attention(q, k, v, pos_key, pos_query, scale: float) -> torch.Tensor:
    """Disentangled attention ([T, H, D] in and out) over the active layout's sequences. Under
    torch.compile the custom op `crossenc::packed_disentangled_attention` (one graph node, which
    reads the layout as it runs) writes into an output allocated before it, in the graph: where
    vLLM captures CUDA graphs around the op, that buffer belongs to the graph before it and keeps
    its address from one replay to the next (as vLLM's own attention's output does). Run
    eagerly, the implementation itself (no op dispatch)."""
    if torch.compiler.is_compiling():
        output = q.new_empty(q.shape)
        packed_disentangled_attention_op(q, k, v, pos_key, pos_query, output, scale)
        return output
    return _attend(q, k, v, pos_key, pos_query, scale)
