"""Disentangled attention over packed sequences: the op, its torch reference, and bucketing.

DeBERTa's attention score between query token i and key token j of one sequence is

    score[i, j] = (q_i . k_j  +  q_i . pos_key[r(i - j)]  +  k_j . pos_query[r(i - j)]) * scale

(content-to-content, content-to-position "c2p", position-to-content "p2c"), where r maps a
relative distance to a row of the per-layer position tables (`rel_index`). Sequences are
packed back to back ([T, H, D], `cu_seqlens`), and no token attends across a boundary.

`disentangled_attention` is registered as the torch custom op `crossenc::disentangled_attention`
so a compiled graph holds it as one node. On CUDA it runs the fused Triton kernel
(`triton_disentangled_attention`); elsewhere the vectorised reference below, which pads a chunk
of sequences to [B, L] with one gather, scores them at once and unpads.
"""

from __future__ import annotations

import math

import torch


def log_bucket_position(relative_pos: torch.Tensor, bucket_size: int, max_position: int) -> torch.Tensor:
    """DeBERTa-v3's log buckets: exact within bucket_size/2, logarithmic beyond (as transformers)."""
    sign = torch.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = torch.where(
        (relative_pos < mid) & (relative_pos > -mid),
        torch.tensor(mid - 1).type_as(relative_pos),
        torch.abs(relative_pos),
    )
    # Same float32 operations in the same order as transformers, so every bucket matches.
    log_pos = (
        torch.ceil(torch.log(abs_pos / mid) / torch.log(torch.tensor((max_position - 1) / mid)) * (mid - 1))
        + mid
    )
    return torch.where(abs_pos <= mid, relative_pos.type_as(log_pos), log_pos * sign).to(torch.long)


def relative_position_index(
    max_seqlen: int, position_buckets: int, max_relative_positions: int, att_span: int,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """rel_index[(i - j) + max_seqlen - 1]: the position-table row for distance i - j."""
    rel = torch.arange(-(max_seqlen - 1), max_seqlen, dtype=torch.long, device=device)
    if position_buckets > 0 and max_relative_positions > 0:
        rel = log_bucket_position(rel, position_buckets, max_relative_positions)
    # int32, as the CUDA kernel loads it; built once per forward.
    return torch.clamp(rel + att_span, 0, 2 * att_span - 1).to(torch.int32)


# The reference scores a chunk of sequences at a time, each chunk padded to its own longest and
# holding at most this many scores (heads x L x L per sequence): one ~150-token sequence of 6
# heads, or many short ones. Padding a whole engine step at once costs more memory traffic than
# compute on a CPU: the forward of 64 pairs of 64-256 tokens took 10.1 s that way and 3.3 s in
# chunks (2 cores, docs/benchmarks.md).
REF_CHUNK_SCORES = 1 << 17


def disentangled_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    pos_key: torch.Tensor | None,
    pos_query: torch.Tensor | None,
    rel_index: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Vectorised torch reference: [T, H, D] in, [T, H, D] out; scores in float32.

    `rel_index` has 2 * max_seqlen - 1 rows (distance i - j = -(max_seqlen - 1) .. max_seqlen - 1)."""
    bounds = cu_seqlens.tolist()
    heads = q.shape[1]
    out = q.new_zeros(q.shape)
    start, num_seqs = 0, len(bounds) - 1
    while start < num_seqs:
        end, longest = start + 1, bounds[start + 1] - bounds[start]
        while end < num_seqs:
            grown = max(longest, bounds[end + 1] - bounds[end])
            if (end + 1 - start) * heads * grown * grown > REF_CHUNK_SCORES:
                break
            end, longest = end + 1, grown
        first, last = bounds[start], bounds[end]
        if longest > 0:
            out[first:last] = _padded_attention(
                q[first:last], k[first:last], v[first:last], cu_seqlens[start:end + 1] - first, longest,
                pos_key, pos_query, rel_index, scale)
        start = end
    return out


def _padded_attention(q, k, v, cu_seqlens, longest, pos_key, pos_query, rel_index, scale):
    """The sequences of `cu_seqlens` (starting at 0), padded to [B, H, longest, D] with one gather."""
    num_tokens = q.shape[0]
    steps = torch.arange(longest, device=q.device)
    single = cu_seqlens.shape[0] == 2  # one sequence: no padding, views instead of a gather
    if single:
        valid = None

        def padded(x: torch.Tensor) -> torch.Tensor:  # [L, H, D] -> [1, H, L, D]
            return x.float().permute(1, 0, 2).unsqueeze(0)
    else:
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        valid = steps[None, :] < lengths[:, None]  # [B, L]
        index = torch.where(valid, cu_seqlens[:-1, None] + steps[None, :], 0).clamp_(max=max(num_tokens - 1, 0))

        def padded(x: torch.Tensor) -> torch.Tensor:  # [T, H, D] -> [B, H, L, D]
            return x.float()[index].permute(0, 2, 1, 3)

    qp, kp, vp = padded(q), padded(k), padded(v)
    scores = qp @ kp.transpose(-1, -2)  # [B, H, L, L]
    shape = scores.shape
    if pos_key is not None or pos_query is not None:
        # rel[i, j] = row of the position tables for distance i - j. rel_index is monotonic, so the
        # rows these sequences can reach are one slice: score only those (2L - 1 at most).
        center = (rel_index.shape[0] - 1) // 2
        reach = rel_index[center - (longest - 1): center + longest]
        lo, hi = int(reach[0]), int(reach[-1])
        rel = (rel_index[steps[:, None] - steps[None, :] + center] - lo).long()
        pos_key = pos_key[lo: hi + 1] if pos_key is not None else None
        pos_query = pos_query[lo: hi + 1] if pos_query is not None else None
    if pos_key is not None:  # c2p: q_i . pos_key[rel[i, j]]
        c2p = torch.einsum("bhid,rhd->bhir", qp, pos_key.float())
        scores = scores + torch.gather(c2p, -1, rel.expand(shape))
    if pos_query is not None:  # p2c: k_j . pos_query[rel[i, j]], gathered per key row then transposed
        p2c = torch.einsum("bhjd,rhd->bhjr", kp, pos_query.float())
        scores = scores + torch.gather(p2c, -1, rel.t().expand(shape)).transpose(-1, -2)
    scores = scores * scale
    if single:
        return (scores.softmax(-1) @ vp)[0].permute(1, 0, 2).to(q.dtype)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = scores.softmax(-1) @ vp  # [B, H, L, D]
    return out.permute(0, 2, 1, 3)[valid].to(q.dtype)


# What the fused Triton kernel takes; other head sizes run the torch reference.
KERNEL_HEAD_SIZES = (32, 64, 128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def kernel_supports(head_size: int, dtype: torch.dtype | None = None) -> bool:
    return head_size in KERNEL_HEAD_SIZES and (dtype is None or dtype in KERNEL_DTYPES)


def _cuda_kernel(q: torch.Tensor):
    """The Triton kernel, if it is installed and takes q's head size and dtype."""
    if not kernel_supports(q.shape[-1], q.dtype):
        return None
    try:
        from crossenc.kernels import triton_disentangled_attention as triton_kernel
    except ImportError:
        return None
    return triton_kernel.triton_disentangled_attention


@torch.library.custom_op("crossenc::disentangled_attention", mutates_args=())
def disentangled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    pos_key: torch.Tensor | None,
    pos_query: torch.Tensor | None,
    rel_index: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    if q.is_cuda and (kernel := _cuda_kernel(q)) is not None:
        return kernel(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale)
    return disentangled_attention_ref(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale)


@disentangled_attention.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale):
    return q.new_empty(q.shape)  # the kernels return contiguous outputs whatever q's strides


def attention_scale(head_size: int, scale_factor: int) -> float:
    """1 / sqrt(D * scale_factor): each of c2c, c2p and p2c that is on adds one to scale_factor."""
    return 1.0 / math.sqrt(head_size * scale_factor)
