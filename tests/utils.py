"""Tiny real checkpoints for tests: random-weight transformers models with a real tokenizer.

Nothing here downloads: configs keep the features of published DeBERTa checkpoints at a
size that runs in seconds, and the tokenizer is a WordPiece built with `tokenizers`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

# Words of the tokenizer's vocabulary (besides special tokens and single characters).
WORDS = (
    "the a an of to in and or is are was be it that this for on with as by at from what how why "
    "which who when where do does can file files compress compressed data zip gzip archive read "
    "write open close socket network server client thread process memory random number python "
    "module function class method string list dict text query document search rank score model "
    "paris france capital city river cat dog sat mat weather rain sun cloud email send message"
).split()
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def compiled_variants(kernel) -> int:
    """How many variants of a Triton or Gluon kernel Triton has compiled in this process (its
    in-memory caches, on every device)."""
    return sum(len(caches[0]) for caches in kernel.device_caches.values())


class GraphRecorder:
    """A torch.compile backend that runs each traced graph as it is and keeps it: which ops the
    graphs of a compiled function call."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def graph_targets(self) -> list[list[str]]:
        """Each traced graph's called ops, in order."""
        return [[str(n.target) for n in gm.graph.nodes if n.op == "call_function"] for gm in self.graphs]

    def targets(self) -> list[str]:
        return [target for graph in self.graph_targets() for target in graph]


QUERY = "how do I compress a file"
DOCUMENTS = [
    "the gzip module can compress and read compressed files",
    "a random number",
    "paris is the capital of france and the river seine runs through the city " * 3,
]


def save_tokenizer(path: str | os.PathLike, model_max_length: int = 512, token_types: bool = True) -> int:
    """A BERT-style WordPiece tokenizer ([CLS] a [SEP] b [SEP]); returns its size. With
    `token_types` a pair's token types go to the model, as BERT's and DeBERTa's tokenizers send
    them; without, as decoder LLMs' tokenizers (Qwen, Llama) do not."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,?!'-")
    vocab = {t: i for i, t in enumerate(dict.fromkeys([*SPECIALS, *letters, *(f"##{c}" for c in letters), *WORDS]))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = vocab["[CLS]"], vocab["[SEP]"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
        model_input_names=["input_ids", *(["token_type_ids"] if token_types else []), "attention_mask"])
    fast.save_pretrained(path)
    return len(vocab)


# Shrunk DeBERTa configs, one per feature family that transformers accepts.
def deberta_config(variant: str = "v3", **overrides):
    from transformers import DebertaV2Config

    base = dict(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0, layer_norm_eps=1e-7, pooler_hidden_size=32, pooler_dropout=0.0,
    )
    variants = {
        # DeBERTa-v3 / mDeBERTa: log buckets, shared key projections, no absolute positions.
        "v3": dict(relative_attention=True, position_buckets=16, max_relative_positions=-1,
                   pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm",
                   position_biased_input=False, type_vocab_size=0),
        # DeBERTa-v2 (xlarge/xxlarge): convolution branch, separate position projections.
        "v2-conv": dict(relative_attention=True, position_buckets=-1, max_relative_positions=-1,
                        pos_att_type="p2c|c2p", share_att_key=False, norm_rel_ebd="layer_norm",
                        conv_kernel_size=3, conv_act="gelu", position_biased_input=False, type_vocab_size=0),
        "v2-conv-groups": dict(relative_attention=True, position_buckets=-1, max_relative_positions=24,
                               pos_att_type="c2p|p2c", share_att_key=True, conv_kernel_size=5, conv_groups=2,
                               position_biased_input=False, type_vocab_size=0),
        "c2p-only": dict(relative_attention=True, position_buckets=8, pos_att_type="c2p",
                         share_att_key=False, position_biased_input=False, type_vocab_size=0),
        "p2c-only": dict(relative_attention=True, position_buckets=8, pos_att_type="p2c",
                         share_att_key=False, position_biased_input=False, type_vocab_size=0),
        # No relative attention: absolute positions only, yet scale_factor still counts pos_att_type.
        "absolute": dict(relative_attention=False, pos_att_type="p2c|c2p", position_biased_input=True,
                         type_vocab_size=0),
        # DeBERTa-v1-like inputs: absolute positions and token types with relative attention.
        "token-types": dict(relative_attention=True, position_buckets=-1, max_relative_positions=32,
                            pos_att_type="c2p|p2c", position_biased_input=True, type_vocab_size=2),
        "embedding-size": dict(relative_attention=True, position_buckets=16, pos_att_type="p2c|c2p",
                               share_att_key=True, embedding_size=24, position_biased_input=False,
                               type_vocab_size=0),
    }
    return DebertaV2Config(**{**base, **variants[variant], **overrides})


def deberta_v1_config(variant: str = "base", **overrides):
    """Shrunk DeBERTa (v1) configs: deberta-base / deberta-large(-mnli) and the other feature
    families transformers' v1 code accepts."""
    from transformers import DebertaConfig

    base = dict(
        vocab_size=256, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=0, layer_norm_eps=1e-7, pooler_hidden_size=32, pooler_dropout=0.0,
    )
    variants = {
        # deberta-base / deberta-large(-mnli): relative c2p and p2c, no absolute positions.
        "base": dict(relative_attention=True, max_relative_positions=-1, pos_att_type="c2p|p2c",
                     position_biased_input=False, type_vocab_size=0),
        # Relative positions clamped within the batch's lengths, absolute positions and token types.
        "clamped": dict(relative_attention=True, max_relative_positions=16, pos_att_type=["c2p", "p2c"],
                        position_biased_input=True, type_vocab_size=2),
        "c2p-only": dict(relative_attention=True, max_relative_positions=24, pos_att_type="c2p",
                         position_biased_input=False, type_vocab_size=0),
        "p2c-only": dict(relative_attention=True, max_relative_positions=24, pos_att_type="p2c",
                         position_biased_input=False, type_vocab_size=0),
        "absolute": dict(relative_attention=False, pos_att_type="c2p|p2c", position_biased_input=True,
                         type_vocab_size=0),
        "embedding-size": dict(relative_attention=True, max_relative_positions=-1, pos_att_type="c2p|p2c",
                               position_biased_input=True, type_vocab_size=0, embedding_size=24),
    }
    return DebertaConfig(**{**base, **variants[variant], **overrides})


V1_VARIANTS = ("base", "clamped", "c2p-only", "p2c-only", "absolute", "embedding-size")


VARIANTS = ("v3", "v2-conv", "v2-conv-groups", "c2p-only", "p2c-only", "absolute", "token-types",
            "embedding-size")


def save_deberta(path: str | os.PathLike, head: str = "seq_cls", variant: str = "v3", seed: int = 0,
                 dtype: str = "float32", **overrides) -> Path:
    """A random-weight DeBERTa checkpoint with a tokenizer, as transformers saves it (`variant`
    "v1-<name>": a DeBERTa v1 one, of `deberta_v1_config`); `dtype`
    "float16" / "bfloat16" saves half-precision weights (config `dtype` says so, as published
    half-precision checkpoints do)."""
    import transformers

    path = Path(path)
    vocab = save_tokenizer(path)
    v1 = variant.startswith("v1-")  # DeBERTa (v1): deberta_v1_config's variant after "v1-"
    config = (deberta_v1_config(variant.removeprefix("v1-"), vocab_size=vocab, **overrides) if v1
              else deberta_config(variant, vocab_size=vocab, **overrides))
    family = "Deberta" if v1 else "DebertaV2"
    suffix = {"seq_cls": "ForSequenceClassification", "token_cls": "ForTokenClassification", "model": "Model"}[head]
    cls = getattr(transformers, family + suffix)
    torch.manual_seed(seed)
    model = spread(cls(config)).to(getattr(torch, dtype))
    model.save_pretrained(path)
    return path


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """Random init leaves biases and LayerNorms at 0/1 and logits within ~1e-4 of each other
    across inputs; perturb the former and scale the heads so every tensor matters and different
    inputs get clearly different scores (tests compare at 1e-4)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif name.startswith(("pooler.dense.", "classifier.")) and name.endswith("weight"):
                p.mul_(25.0)
    return model.eval()


def hf_logits(path, cls, texts: list[str]) -> list[torch.Tensor]:
    """transformers' logits for each text alone (`cls` e.g. AutoModelForTokenClassification), in
    float32 whatever the checkpoint's dtype (tests.conftest.HfRunner)."""
    from tests.conftest import HfRunner

    return HfRunner(path, cls.__name__).logits(texts)


# Mixed lengths for the parity tests: a single token, and longer than a shrunk config's 16 buckets
# (v3) or relative positions (v1).
MIXED_LENGTHS = (1, 7, 33, 90, 12)


def random_sequences(vocab: int, seed: int = 0, lengths=MIXED_LENGTHS) -> list[list[int]]:
    """Random token ids (never 0, the pad id), one list per length."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def loaded_from(cls, hf_model):
    """crossenc's `cls` built from a transformers model's config, with its weights, in eval mode."""
    model = cls(config=hf_model.config).eval()
    model.load_weights(hf_model.state_dict().items())
    return model


def pad_batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask, as transformers takes them."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def pack_batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed ids and positions, as vLLM runs them."""
    ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long)
    positions = torch.cat([torch.arange(len(s)) for s in seqs])
    return ids, positions


def scoring_processor(path, **model_config_kwargs):
    """vLLM's cross-encoder scoring processor as `vllm serve` and `LLM.score` build it (crossenc's,
    once crossenc is loaded), for a checkpoint directory, without an engine."""
    from types import SimpleNamespace

    from vllm.config import ModelConfig, VllmConfig
    from vllm.plugins import load_general_plugins
    from vllm.renderers.registry import renderer_from_config

    load_general_plugins()
    from crossenc.entrypoints.pooling.score_template import TemplatedCrossEncoderIOProcessor

    kwargs = {"runner": "pooling", "max_model_len": 512, **model_config_kwargs}
    vllm_config = VllmConfig(model_config=ModelConfig(model=str(path), **kwargs))
    chat_template_config = SimpleNamespace(chat_template=None, chat_template_content_format="auto",
                                           trust_request_chat_template=False, trust_request_mm_kwargs=False)
    return TemplatedCrossEncoderIOProcessor(vllm_config, renderer_from_config(vllm_config), chat_template_config)


def score_render_params(processor, query, document, truncate: int | None = None, instruction: str | None = None,
                        side: str | None = None):
    """What vLLM's scoring entry points hand the processor's `render` for one pair (`side`: a
    request's truncation_side, vLLM 0.27+)."""
    from vllm import PoolingParams

    tok_params = processor.renderer.default_cmpl_tok_params
    if truncate is not None:
        tok_params = tok_params.with_kwargs(truncate_prompt_tokens=truncate,
                                            **({"truncation_side": side} if side else {}))
    extras = None if instruction is None else {"chat_template_kwargs": {"instruction": instruction}}
    return dict(data_1=query, data_2=document, chat_template=None, max_tokens_per_query=0,
                max_tokens_per_doc=0, tok_params=tok_params, prompt_extras=extras, skip_mm_cache=False,
                params=PoolingParams(task="classify"), lora_requests=None, priorities=0)
