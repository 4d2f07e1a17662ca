"""An oversized text is cut to a window before it is tokenized, and the window gives exactly
the token ids that tokenizing the whole text and truncating gives (transformers' truncation,
both sides, single texts and pairs), for the tokenizer shapes crossenc serves: WordPiece (BERT,
a real vocabulary), Unigram with Metaspace (DeBERTa-v3), byte-level BPE (Qwen, Llama)."""

from __future__ import annotations

import random

import pytest
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from crossenc.entrypoints.pooling import text_window
from tests.convert.tiny import make_tokenizer
from tests.utils import save_tokenizer


def _unigram(path):
    """DeBERTa-v3's shape: Unigram pieces, space runs collapsed, Metaspace."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = {"[PAD]": 0.0, "[CLS]": 0.0, "[SEP]": 0.0, "[UNK]": 0.0}
    for c in letters:
        pieces.setdefault("▁" + c, -8.0)
        pieces.setdefault(c, -9.0)
    while len(pieces) < 2000:
        piece = "".join(rng.choices(letters, k=rng.randint(2, 7)))
        pieces.setdefault(rng.choice(("▁", "")) + piece, -4.0 - 6 * rng.random())
    tok = Tokenizer(models.Unigram(list(pieces.items()), unk_id=3))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(Regex(" +"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")
    fast.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def _minilm():
    from crossenc.demo.teacher import teacher_path

    return AutoTokenizer.from_pretrained(teacher_path())


@pytest.fixture(scope="module", params=["wordpiece", "bert-uncased", "unigram-metaspace", "byte-level-bpe"])
def tokenizer(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "wordpiece":
        save_tokenizer(path)
        return AutoTokenizer.from_pretrained(path)
    if request.param == "bert-uncased":
        return _minilm()
    if request.param == "unigram-metaspace":
        return _unigram(path)
    return make_tokenizer(path)


def _texts():
    rng = random.Random(1)
    words = ["the", "gzip", "module", "compresses", "files", "naïve", "café", "日本語", "🙂", "data,", "x" * 40]
    prose = " ".join(rng.choice(words) for _ in range(20_000))
    return {
        "prose": prose,
        "space runs": (" " * 500).join(["read the file"] * 300),
        "no whitespace": "abcdefghij" * 10_000,
        "dropped characters first": "\x00\x01\x02" * 10_000 + " " + prose[:20_000],
        "one long word, then prose": "z" * 30_000 + " " + prose[:20_000],
        "short": "read the file",
    }


TEXTS = _texts()


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("keep", [1, 24, 513])
def test_window_holds_the_truncated_tokens_of_the_whole_text(tokenizer, keep, side):
    names = list(TEXTS)
    cut = text_window.windows(tokenizer, [TEXTS[n] for n in names], keep, side)
    whole = tokenizer([TEXTS[n] for n in names], add_special_tokens=False)["input_ids"]
    windowed = tokenizer(cut, add_special_tokens=False)["input_ids"]
    for name, ids, window_ids, window in zip(names, whole, windowed, cut):
        expected = ids[:keep] if side == "right" else ids[max(0, len(ids) - keep):]
        got = window_ids[:keep] if side == "right" else window_ids[max(0, len(window_ids) - keep):]
        assert got == expected, name
    # An ordinary oversized text is cut to what `keep` tokens take, not tokenized whole.
    assert len(cut[names.index("prose")]) < len(TEXTS["prose"]) // 10
    assert cut[names.index("short")] == TEXTS["short"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("keep", [24, 513])
def test_pair_truncation_of_windows_equals_transformers_on_the_whole_pair(tokenizer, keep, side):
    """A pair tokenized with transformers' truncation (longest first, to max_length) depends on
    each text only up to max_length tokens from the truncated side. (The texts are shorter
    here: the reference, the Rust tokenizer's truncation of a pair, keeps every overflowing
    combination of the two texts' cut-off parts, which grows with the product of their lengths.)"""
    tokenizer.truncation_side = side
    texts = {name: text[:1_500 if keep < 100 else 12_000] for name, text in TEXTS.items()}
    try:
        pairs = [(texts[q], texts[d]) for q in ("short", "prose", "space runs") for d in texts]
        cut = text_window.pair_windows(tokenizer, pairs, keep, side, keep_order=True)
        kwargs = dict(truncation=True, max_length=keep)
        expected = tokenizer([q for q, _ in pairs], [d for _, d in pairs], **kwargs)["input_ids"]
        got = tokenizer([q for q, _ in cut], [d for _, d in cut], **kwargs)["input_ids"]
        assert got == expected
    finally:
        tokenizer.truncation_side = "right"
