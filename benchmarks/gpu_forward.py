"""Model forward on one GPU: crossenc against HF eager, FlashDeBERTa, disentangled-flash, BERT-SDPA.

The workloads of shared/benchmarks.md (random weights of the named shape, fp16, token ids uniform
in the vocabulary, lengths uniform in the range), every system in one process on the same
batches and the same weights. Timed: embeddings -> encoder -> pooler -> classifier, CUDA events
around each forward, median of --iters runs after --warmup runs. "Real tokens" excludes padding.

    python benchmarks/gpu_forward.py --out results.json [--shapes v3-base] [--workloads rerank-short]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata

import torch

SHAPES = {
    "v3-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "v3-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}
WORKLOADS = {  # name: (batch, min length, max length)
    "rerank-short": (256, 64, 256),
    "rerank-long": (64, 256, 512),
    "long-2k": (8, 1536, 2048),
}
VOCAB = 128100
SYSTEMS = ("hf-eager", "flashdeberta", "disentangled-flash", "bert-sdpa", "crossenc")
# also: crossenc-exact (the layout read back from the GPU, as crossenc runs without vLLM) and
# crossenc+compile (the encoder under torch.compile)


def deberta_config(shape: str):
    """DeBERTa-v3's configuration (log buckets, shared keys, no absolute positions) at `shape`, one
    of benchmarks/score.py's shapes (SHAPES above, and the smaller ones the CPU runs)."""
    from transformers import DebertaV2Config

    from score import SHAPES as ALL_SHAPES

    return DebertaV2Config(
        vocab_size=VOCAB, max_position_embeddings=512, relative_attention=True, position_buckets=256,
        max_relative_positions=-1, norm_rel_ebd="layer_norm", share_att_key=True,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0, layer_norm_eps=1e-7,
        hidden_act="gelu", num_labels=1, **ALL_SHAPES[shape],
    )


class Batch:
    def __init__(self, workload: str, seed: int = 0):
        batch, lo, hi = WORKLOADS[workload]
        gen = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(lo, hi + 1, (batch,), generator=gen)
        ids = [torch.randint(0, VOCAB, (int(n),), generator=gen) for n in self.lengths]
        self.tokens = int(self.lengths.sum())
        self.max_len = int(self.lengths.max())
        padded = torch.zeros(batch, self.max_len, dtype=torch.long)
        mask = torch.zeros_like(padded)
        for b, x in enumerate(ids):
            padded[b, : len(x)] = x
            mask[b, : len(x)] = 1
        self.padded, self.mask = padded.cuda(), mask.cuda()
        self.packed = torch.cat(ids).cuda()
        self.positions = torch.cat([torch.arange(int(n)) for n in self.lengths]).cuda()
        cu = torch.zeros(batch + 1, dtype=torch.int32)
        cu[1:] = self.lengths.cumsum(0)
        self.cu_seqlens = cu.cuda()
        self.offsets = tuple(cu.tolist())


def build(system: str, shape: str, state_dict: dict, batch: Batch) -> Callable[[], torch.Tensor]:
    """A no-argument forward returning [B, 1] logits, for one system on one batch."""
    config = deberta_config(shape)
    dev, dt = "cuda", torch.float16
    if system == "hf-eager":
        from transformers import DebertaV2ForSequenceClassification

        config._attn_implementation = "eager"
        model = DebertaV2ForSequenceClassification(config)
        model.load_state_dict(state_dict)
        model = model.to(dev, dt).eval()
        return lambda: model(input_ids=batch.padded, attention_mask=batch.mask).logits
    if system == "flashdeberta":
        from flashdeberta import FlashDebertaV2ForSequenceClassification

        model = FlashDebertaV2ForSequenceClassification(config)
        model.load_state_dict(state_dict)
        model = model.to(dev, dt).eval()
        return lambda: model(input_ids=batch.padded, attention_mask=batch.mask).logits
    if system == "disentangled-flash":
        from disentangled_flash import PackedSequenceInfo, optimize_deberta
        from transformers import DebertaV2ForSequenceClassification

        config._attn_implementation = "eager"
        model = DebertaV2ForSequenceClassification(config)
        model.load_state_dict(state_dict)
        model = model.to(dev, dt).eval()
        optimize_deberta(model.deberta)
        lengths = tuple(int(n) for n in batch.lengths)
        info = PackedSequenceInfo(batch.offsets, lengths, batch.max_len)
        first = batch.cu_seqlens[:-1].long()

        def forward():  # its packed path: embeddings on the packed ids, encoder.forward_packed
            x = model.deberta.embeddings(input_ids=batch.packed[None])[0]
            h = model.deberta.encoder.forward_packed(
                x, batch.cu_seqlens, batch.max_len, output_hidden_states=False, packed_info=info
            ).last_hidden_state
            return model.classifier(model.pooler(h[first][:, None]))

        return forward
    if system == "bert-sdpa":
        from transformers import BertConfig, BertForSequenceClassification

        bert = BertConfig(vocab_size=VOCAB, max_position_embeddings=2048, type_vocab_size=2, num_labels=1,
                          **SHAPES[shape])
        bert._attn_implementation = "sdpa"
        model = BertForSequenceClassification(bert).to(dev, dt).eval()
        return lambda: model(input_ids=batch.padded, attention_mask=batch.mask).logits
    if system in ("crossenc", "crossenc-exact", "crossenc+compile"):
        from crossenc.model_executor.models.deberta_v2 import DebertaV2ForSequenceClassification

        model = DebertaV2ForSequenceClassification(config=config)
        model.load_weights(state_dict.items())
        model = model.to(dev, dt).eval()
        if system == "crossenc-exact":  # the layout read back from the GPU (two host syncs per forward)
            return lambda: model.logits(model(batch.packed, batch.positions), batch.positions)
        # As vLLM runs it on a GPU: the sequence boundaries laid out within bounds known on the host
        # (the step's sequences + one padding group, the model's length limit: 512 tokens, 2,048
        # past it), and the first tokens' rows from where the sequences start (vLLM's pooling
        # metadata), so the forward reads nothing back from the GPU.
        model.deberta.layout_bounds = dict(max_seqs=len(batch.lengths) + 1,
                                           max_seqlen=512 if batch.max_len <= 512 else 2048)
        first = batch.cu_seqlens[:-1].long()
        # "+compile": torch.compile fuses the pointwise work around the GEMMs (bias, GELU, residual
        # add, LayerNorm) of the encoder, the part vLLM compiles (CROSSENC_TORCH_COMPILE=1); the
        # attention op stays one node.
        if system == "crossenc+compile":
            encoder = model.deberta.encoder
            encoder.forward = torch.compile(encoder.forward, fullgraph=True, dynamic=True)

        def forward():
            return model.classifier(model.projector(model(batch.packed, batch.positions)[first]))

        forward.model = model  # for benchmarks/forward_timeline.py
        return forward
    raise ValueError(f"unknown system {system!r}")


def measure(fn: Callable[[], torch.Tensor], warmup: int, iters: int) -> dict:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return dict(
        median_ms=statistics.median(times), min_ms=times[0], max_ms=times[-1],
        peak_gib=torch.cuda.max_memory_allocated() / 2**30,
        peak_over_resident_gib=(torch.cuda.max_memory_allocated() - base) / 2**30,
        logits=out.float().flatten(),
    )


def versions() -> dict:
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version()}
    for name in ("triton", "transformers", "flashdeberta", "disentangled-flash"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS))
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS))
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    results = {"env": versions(), "warmup": args.warmup, "iters": args.iters, "runs": [], "failures": []}
    with torch.inference_mode():
        for shape in args.shapes:
            from transformers import DebertaV2ForSequenceClassification

            torch.manual_seed(0)
            state_dict = {k: v.half() for k, v in DebertaV2ForSequenceClassification(deberta_config(shape))
                          .state_dict().items()}
            for workload in args.workloads:
                batch = Batch(workload)
                reference = None
                for system in args.systems:
                    t0 = time.time()
                    try:
                        fn = build(system, shape, state_dict, batch)
                        row = measure(fn, args.warmup, args.iters)
                    except Exception as error:  # a peer that cannot run is reported, not fatal
                        results["failures"].append(dict(shape=shape, workload=workload, system=system,
                                                        error=f"{type(error).__name__}: {error}"[:500]))
                        print(f"{shape:9s} {workload:13s} {system:19s} FAILED {type(error).__name__}: {error}"[:300],
                              flush=True)
                        fn = None
                        gc.collect()
                        torch.cuda.empty_cache()
                        continue
                    logits = row.pop("logits")
                    if system == "hf-eager":
                        reference = logits
                    if reference is not None and system != "bert-sdpa":
                        row["max_abs_dlogit_vs_hf_fp16"] = (logits - reference).abs().max().item()
                    row.update(shape=shape, workload=workload, system=system, batch=len(batch.lengths),
                               real_tokens=batch.tokens, padded_tokens=batch.padded.numel(),
                               tokens_per_s=batch.tokens / (row["median_ms"] / 1e3), wall_s=time.time() - t0)
                    results["runs"].append(row)
                    print(f"{shape:9s} {workload:13s} {system:19s} {row['tokens_per_s'] / 1e3:9.0f} k tok/s "
                          f"{row['median_ms']:8.2f} ms  peak {row['peak_gib']:.2f} GiB  "
                          f"dlogit {row.get('max_abs_dlogit_vs_hf_fp16', float('nan')):.1e}", flush=True)
                    del fn
                    gc.collect()
                    torch.cuda.empty_cache()
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
