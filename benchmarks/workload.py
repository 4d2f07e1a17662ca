"""The benchmark workload: a tokenizer shaped like DeBERTa-v3's and reranking texts for it.

DeBERTa-v3's tokenizer is a SentencePiece Unigram model of 128,000 pieces behind a Metaspace
pre-tokenizer ("▁" marks a word start), with [CLS] a [SEP] b [SEP] pairs and token types. The
one built here has the same model, size, pre-tokenizer and template, so tokenizing costs what it
costs users (a Viterbi search per word over 128k pieces); its pieces are made-up syllables, and
words outside the known list split into several pieces as rare words do.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]")
PIECES = 128_000  # SentencePiece pieces, specials included; [MASK] comes after them, as in DeBERTa-v3
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def _syllables() -> list[str]:
    return [c + v for c in _CONSONANTS for v in _VOWELS] + [
        c + v + e for c in _CONSONANTS for v in _VOWELS for e in "nrst"]


def words(n: int = 20_000, seed: int = 0) -> list[str]:
    """The tokenizer's known words: one to four syllables each."""
    rng = random.Random(seed)
    syl = _syllables()
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choices(syl, k=rng.choice((1, 1, 2, 2, 2, 3))))] = None
    return list(out)


def save_spm_tokenizer(path: str | Path, model_max_length: int = 512) -> int:
    """Save a DeBERTa-v3-shaped Unigram tokenizer at `path`; returns the id of [MASK]."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    known = words()
    syl = _syllables()
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,?!'-")
    vocab: dict[str, float] = {s: 0.0 for s in SPECIALS}
    for i, w in enumerate(known):  # frequent words first, as SentencePiece orders them
        vocab["▁" + w] = -6.0 - 6.0 * i / len(known)
    for s in syl:
        vocab.setdefault("▁" + s, -13.0)
        vocab.setdefault(s, -13.5)
    for c in letters:
        vocab.setdefault("▁" + c, -16.0)
        vocab.setdefault(c, -16.5)
    vocab.setdefault("▁", -15.0)
    while len(vocab) < PIECES:  # the long tail: pieces that ordinary text rarely reaches
        piece = "".join(rng.choices(syl, k=rng.randint(2, 5)))
        vocab.setdefault(rng.choice(("▁", "")) + piece, -14.0 - 4.0 * rng.random())
    pieces = list(vocab.items())
    tok = Tokenizer(models.Unigram(pieces, unk_id=SPECIALS.index("[UNK]")))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" +", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    mask_id = len(pieces)
    tok.add_special_tokens(list(SPECIALS) + ["[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=model_max_length,
        model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    fast.save_pretrained(path)
    return mask_id


def rerank_texts(tokenizer, pairs: int, min_tokens: int = 64, max_tokens: int = 256,
                 seed: int = 0, cache: str | Path | None = None) -> tuple[str, list[str]]:
    """One query and `pairs` documents; each (query, document) pair is `min_tokens`–`max_tokens`
    tokens long (uniform). One word in eight is one the tokenizer does not know whole. With
    `cache` (a JSON file), texts made once are read back."""
    if cache is not None and Path(cache).exists():
        query, docs = json.loads(Path(cache).read_text())
        if len(docs) >= pairs:
            return query, docs[:pairs]
    rng = random.Random(seed)
    known = words()
    syl = _syllables()

    def word() -> str:
        if rng.random() < 0.125:
            return "".join(rng.choices(syl, k=rng.randint(2, 3)))
        return rng.choice(known)

    def sentence(n: int) -> str:
        text = " ".join(word() for _ in range(n))
        return text[0].upper() + text[1:] + rng.choice((".", ".", "?", ","))

    query = sentence(8)
    query_len = len(tokenizer(query)["input_ids"])
    docs = []
    while len(docs) < pairs:
        target = rng.randint(min_tokens, max_tokens)
        parts: list[str] = []
        length = query_len
        while length < target:
            parts.append(sentence(rng.randint(6, 18)))
            length = len(tokenizer(query, " ".join(parts))["input_ids"])
        doc_ids = tokenizer(" ".join(parts), add_special_tokens=False)["input_ids"]
        doc_ids = doc_ids[: max(1, len(doc_ids) - (length - target))]
        docs.append(tokenizer.decode(doc_ids))
    if cache is not None:
        Path(cache).write_text(json.dumps([query, docs]))
    return query, docs
