"""Tiny random-weight CausalLM rerankers (Qwen3, Qwen2, Gemma) with a small BPE tokenizer, and
the references the tests compare with: each reranker's prompt as its own code builds it, and the
CausalLM's token scores on that prompt."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GemmaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)

from crossenc import presets

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
# Every preset's template text plus the classifier tokens, so BPE learns them as whole words:
# "no", "yes", "Yes", "0" and "1" must be single ids, "YES" must not.
_CORPUS = [p.template.text("query", "document", "instruction") for p in presets.PRESETS.values()
           if p.template.instruction_format] + [
    presets.PRESETS["bge-reranker-v2-gemma"].template.text("query", "document"),
    "yes no Yes 0 1",
    # " yes" becomes its own token ("Ġyes"): a classifier token spelled " yes" is ambiguous.
    "answer yes answer yes answer yes",
    "yes",
    "no",
    "Yes",
    "What is the capital of China? The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
]

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to "
    "physical objects and is responsible for the movement of planets around the sun.",
]

# family -> (config class, preset name, tie_word_embeddings). The vLLM CPU backend needs a
# supported head size (32).
FAMILIES = {
    "qwen3": (Qwen3Config, "qwen3-reranker", False),
    "qwen2": (Qwen2Config, "mxbai-rerank-v2", True),
    "gemma": (GemmaConfig, "bge-reranker-v2-gemma", True),
}


def make_tokenizer(path) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def make_causal_lm(path, family: str, seed: int = 0):
    """Save a tiny random CausalLM of `family` with the test tokenizer at `path`."""
    config_cls, _, tied = FAMILIES[family]
    tokenizer = make_tokenizer(path)
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Random init gives near-identical logits for every token; widen them so the scores
    # differ visibly between pairs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    model.save_pretrained(path)
    return model, tokenizer


def encode(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# The prompts as each checkpoint's published code builds them, written out independently.
def qwen3_reranker_reference(tokenizer, query, doc, instruction=None):
    # Qwen3-Reranker model card: prefix + format_instruction(...) + suffix, each tokenized alone.
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the "
        'Query and the Instruct provided. Note that the answer can only be "yes" or "no".'
        "<|im_end|>\n<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    instruction = instruction or "Given a web search query, retrieve relevant passages that answer the query"
    pair = f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"
    return encode(tokenizer, prefix) + encode(tokenizer, pair) + encode(tokenizer, suffix)


def bge_gemma_reference(tokenizer, query, passage):
    # FlagEmbedding's LLM reranker: [bos] + "A: q", sep + "B: p", then sep + prompt.
    prompt = (
        "Given a query A and a passage B, determine whether the passage contains an answer to "
        "the query by providing a prediction of either 'Yes' or 'No'."
    )
    sep = encode(tokenizer, "\n")
    return (
        [tokenizer.bos_token_id]
        + encode(tokenizer, f"A: {query}")
        + sep
        + encode(tokenizer, f"B: {passage}")
        + sep
        + encode(tokenizer, prompt)
    )


def mxbai_v2_reference(tokenizer, query, document, instruction=None):
    # mxbai-rerank v2: chat prefix + query text + sep + doc text + sep + task prompt + suffix.
    prefix = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\n"
    )
    task = (
        "You are a search relevance expert who evaluates how well documents match search "
        "queries. For each query-document pair, carefully analyze the semantic relationship "
        "between them, then provide your binary relevance judgment (0 for not relevant, 1 for "
        "relevant).\nRelevance:"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n"
    sep = "\n"
    query_text = f"query: {query}"
    if instruction:
        query_text = f"instruction: {instruction}" + sep + query_text
    return (
        encode(tokenizer, prefix)
        + encode(tokenizer, query_text)
        + encode(tokenizer, sep)
        + encode(tokenizer, f"document: {document}")
        + encode(tokenizer, sep)
        + encode(tokenizer, task)
        + encode(tokenizer, suffix)
    )


REFERENCE_PROMPTS = {
    "qwen3-reranker": qwen3_reranker_reference,
    "bge-reranker-v2-gemma": bge_gemma_reference,
    "mxbai-rerank-v2": mxbai_v2_reference,
}


def causal_scores(model_dir: str, preset: presets.Preset, prompts: list[list[int]]) -> list[float]:
    """The CausalLM's own scores of token-id prompts: the classifier tokens' logits at the last
    position, through the method (softmax over [false, true], or sigmoid of the one token's)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = [tokenizer.convert_tokens_to_ids(t) for t in preset.tokens]
    scores = []
    with torch.no_grad():
        for prompt in prompts:
            logits = model(torch.tensor([prompt])).logits[0, -1, ids]
            if preset.method == "from_2_way_softmax":
                scores.append(torch.softmax(logits, -1)[1].item())
            else:
                scores.append(torch.sigmoid(logits[0]).item())
    return scores


def reference_scores(model_dir: str, preset: presets.Preset, pairs, instruction: str | None = None):
    """The CausalLM's scores on the prompts the reranker's own code builds."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    extra = {} if instruction is None else {"instruction": instruction}
    build = REFERENCE_PROMPTS[preset.name]
    return causal_scores(model_dir, preset, [build(tokenizer, q, d, **extra) for q, d in pairs])
