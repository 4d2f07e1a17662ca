"""Disentangled attention over packed sequences: the op, its torch reference, and bucketing.

DeBERTa's attention score between query token i and key token j of one sequence is

    score[i, j] = (q_i . k_j  +  q_i . pos_key[r(i - j)]  +  k_j . pos_query[r(i - j)]) * scale

(content-to-content, content-to-position "c2p", position-to-content "p2c"), where r maps a
relative distance to a row of the per-layer position tables (`rel_index`). Sequences are
packed back to back ([T, H, D], `cu_seqlens`), and no token attends across a boundary.

`attention_impl` runs it: on CUDA the fused Triton kernel (`triton_disentangled_attention`), which
hands fp16/bf16 batches with heads of 64 on Hopper to a warpgroup-MMA kernel (`gluon_disentangled_attention`,
`uses_wgmma_kernel`); elsewhere the vectorised reference below, which pads a chunk of sequences to [B, L] with one
gather, scores them at once and unpads. A model calls it through `packed_attention`
(model_executor/layers/packed_layout.py), the custom op a compiled graph holds as one node.
"""

from __future__ import annotations

import math
import os

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


def saturation_distance(rel_index: torch.Tensor) -> int:
    """The smallest distance d >= 1 from which the distances of each side share one position row:
    rel_index[d'] is the same for every d' in d..M-1, and for every d' in -(M-1)..-d (M =
    max_seqlen; v3's log buckets: ~512, past the buckets). The CUDA kernel takes key tiles that far
    from a query tile without the window. Read on the host: give it rel_index before it moves to
    a GPU."""
    rows = rel_index.tolist()
    m = (len(rows) + 1) // 2
    d = m - 1
    while d > 1 and rows[m - 1 + d - 1] == rows[-1] and rows[m - 1 - (d - 1)] == rows[0]:
        d -= 1
    return max(d, 1)


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
    tables = _distance_tables(pos_key, pos_query, rel_index, scale)
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
                tables, scale)
        start = end
    return out


def _distance_tables(pos_key, pos_query, rel_index, scale):
    """The position tables row by distance, pre-scaled, as [H, D, 2M - 1] for M = max_seqlen:
    c2p's by descending distance i - j (column j - i + M - 1), p2c's by ascending (column
    i - j + M - 1); None where the term is off. Built once per call, sliced per chunk."""
    if pos_key is None and pos_query is None:
        return None
    rows = rel_index.long()  # rel_index[d + M - 1]: the row of distance d, ascending

    def table(positions, order):
        return None if positions is None else (positions.float()[order] * scale).permute(1, 2, 0).contiguous()

    return table(pos_key, rows.flip(0)), table(pos_query, rows)


def _padded_attention(q, k, v, cu_seqlens, longest, tables, scale):
    """The sequences of `cu_seqlens` (starting at 0), padded to [B, H, longest, D] with one gather.

    The position terms depend on i - j only. Each is one product against the table rows of the
    2L - 1 distances of a length-L block (`_distance_tables`), [B, H, L, 2L - 1], read as
    [B, H, L, L] through a strided view (row i starts one column earlier than row i - 1): no
    gather over the scores. Their sum is the additive mask of torch's fused attention (SDPA),
    which scores c2c, adds it, normalises and weights the values in one pass."""
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
    batch, heads, length = qp.shape[0], qp.shape[1], longest
    width = 2 * length - 1

    def by_distance(table: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """[B, H, L, L] view of x_a . table[:, :, m] at m = b - a + L - 1 (the block's 2L - 1 columns)."""
        center = (table.shape[-1] - 1) // 2
        full = torch.matmul(x, table[..., center - (length - 1): center + length])  # [B, H, L, 2L - 1]
        return full.as_strided((batch, heads, length, length),
                               (heads * length * width, length * width, width - 1, 1), length - 1)

    bias = None
    if tables is not None:
        c2p_table, p2c_table = tables
        if c2p_table is not None:  # c2p[i, j] = q_i . pos_key[r(i - j)]
            bias = by_distance(c2p_table, qp)
        if p2c_table is not None:  # p2c[i, j] = k_j . pos_query[r(i - j)], made as [j, i]
            p2c = by_distance(p2c_table, kp).transpose(-1, -2)
            bias = p2c if bias is None else bias + p2c
    if valid is not None:  # keys past a sequence's end
        keys = torch.zeros(valid.shape, dtype=qp.dtype, device=qp.device).masked_fill_(~valid, float("-inf"))
        keys = keys[:, None, None, :]
        bias = keys.expand(batch, heads, length, length) if bias is None else bias + keys
    out = torch.nn.functional.scaled_dot_product_attention(qp, kp, vp, attn_mask=bias, scale=scale)
    if single:
        return out[0].permute(1, 0, 2).to(q.dtype)
    return out.permute(0, 2, 1, 3)[valid].to(q.dtype)


# What the fused Triton kernel takes; other head sizes run the torch reference.
KERNEL_HEAD_SIZES = (32, 64, 128)
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def query_tile_rows(head_dim: int, dtype: torch.dtype, max_seqlen: int, device: torch.device | None = None) -> int:
    """Rows per query tile of the kernel the CUDA op runs by default (its BLOCK_M): 64 for the
    warpgroup-MMA kernel (`uses_wgmma_kernel`, given the device) and past 512 tokens in fp16/bf16
    with heads of up to 64, else 32."""
    if device is not None and uses_wgmma_kernel(head_dim, dtype, device):
        return WGMMA_TILE
    return 64 if dtype != torch.float32 and head_dim <= 64 and max_seqlen > 512 else 32


# The warpgroup-MMA kernel's tiles (64 query rows, 64 keys).
WGMMA_TILE = 64


def _wgmma_available(device_index: int) -> bool:
    from crossenc.kernels import gluon_kernel_available

    return gluon_kernel_available("gluon_disentangled_attention", device_index)


def uses_wgmma_kernel(head_dim: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the CUDA op runs the warpgroup-MMA kernel (gluon_disentangled_attention): on Hopper
    (sm_90) with a verified Triton, fp16/bf16 and heads of 64 (every v3 model's), at any length
    and any position buckets. CROSSENC_WGMMA_ATTENTION=0 turns it off."""
    if device.type != "cuda" or head_dim != 64 or dtype not in (torch.float16, torch.bfloat16):
        return False
    if os.environ.get("CROSSENC_WGMMA_ATTENTION", "1") == "0":
        return False
    return _wgmma_available(torch.cuda.current_device() if device.index is None else device.index)


def has_far_ranges(far: int, max_seqlen: int, block_m: int, block_n: int) -> bool:
    """Whether any query tile of `block_m` rows and key tile of `block_n` keys can lie `far` or
    more apart (every distance between them), so that the CUDA kernel needs its far ranges: a key
    tile before a query tile starting at most at max_seqlen - 1 (far + block_n <= max_seqlen), or
    one after the first query tile (far + block_m <= max_seqlen). Else their code is compiled out:
    every v3 batch of up to 512 tokens, whose `saturation_distance` is still below max_seqlen (the
    last distance alone always shares its row)."""
    return far + min(block_m, block_n) <= max_seqlen


def query_tiles(cu_seqlens: torch.Tensor, rows: int = 32) -> torch.Tensor:
    """int32 [B + 1]: the index of each sequence's first query tile of `rows` rows, and the
    total, on cu_seqlens' device (no host read). The kernel needs it in every layer; a model
    makes it once per forward and hands it to each call."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    tiles = torch.zeros(cu_seqlens.shape[0], dtype=torch.int32, device=cu_seqlens.device)
    torch.cumsum((lengths + (rows - 1)) // rows, 0, dtype=torch.int32, out=tiles[1:])
    return tiles


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


def attention_impl(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale, tiles=None, far=None,
                   out=None):
    """The attention itself, without the custom op: the CUDA kernel where it runs, else the
    reference; written into `out` if given."""
    if q.is_cuda and (kernel := _cuda_kernel(q)) is not None:
        return kernel(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale, tiles=tiles, far=far,
                      out=out)
    result = disentangled_attention_ref(q, k, v, cu_seqlens, max_seqlen, pos_key, pos_query, rel_index, scale)
    return result if out is None else out.copy_(result)


def attention_scale(head_size: int, scale_factor: int) -> float:
    """1 / sqrt(D * scale_factor): each of c2c, c2p and p2c that is on adds one to scale_factor."""
    return 1.0 / math.sqrt(head_size * scale_factor)
