"""Oversized texts cut before they are tokenized whole, with the token ids of the whole text.

A scoring pair is tokenized with truncation to at most `keep` tokens per text (vLLM asks the
tokenizer for `max_model_len + 1` tokens when it will refuse a longer prompt, or for
`truncate_prompt_tokens` when it truncates). Whatever lies beyond a text's first `keep` tokens
(its last, when truncating from the left) never reaches the engine, yet the tokenizer reads it
all: a megabyte document costs a second of a thread that every request shares.

`windows` replaces such a text with the part of it that holds its first (or last) `keep`
tokens, cut at a whitespace character so that no word is split, and checks by tokenizing the
window that it holds `keep + MARGIN` tokens; where it does not (a normalizer that drops
characters, long runs without whitespace, unknown characters fused into one token), the window
doubles until it does or covers the text. Tokenizers split words at whitespace before they
tokenize them, so the window's first `keep` tokens are the whole text's, and truncation, which
reads no further (longest-first truncation of a pair included: it depends only on each text's
length up to `keep`), gives the same ids. The cost is bounded by what `keep` tokens take, not by
the text's length.
"""

from __future__ import annotations

from typing import Any

# Tokens a window holds beyond `keep`, so that the tokens near its cut are never the ones kept.
MARGIN = 16
# Characters per token a first window assumes (real text: 3 to 5).
FIRST_GUESS_CHARS_PER_TOKEN = 8


def windows(tokenizer: Any, texts: list[str], keep: int, side: str = "right") -> list[str]:
    """Each text, or the part of it (a prefix for side "right", a suffix for "left") that holds
    its first (last) `keep` tokens and tokenizes to them; short texts are returned unchanged."""
    return _grown(tokenizer, texts, [keep + MARGIN] * len(texts), side)[0]


def pair_windows(tokenizer: Any, pairs: list[tuple[str, str]], keep: int, side: str = "right",
                 keep_order: bool = False) -> list[tuple[str, str]]:
    """`windows` of both texts of each pair. With `keep_order` (a tokenizer's longest-first
    truncation, which gives the longer text of the two the odd token), a cut text also stays
    longer than the other text of its pair exactly where it was: where both are long, both
    windows grow until the shorter text is whole."""
    texts = [t for pair in pairs for t in pair]
    out, counts = _grown(tokenizer, texts, [keep + MARGIN] * len(texts), side)
    while keep_order:
        # The token counts of whole texts paired with a cut one.
        whole = [i + k for i in range(0, len(texts), 2) for k in (0, 1)
                 if counts[i + k] is None and counts[i + 1 - k] is not None]
        for i, count in zip(whole, _token_counts(tokenizer, [texts[i] for i in whole])):
            counts[i] = count
        need = [0] * len(texts)
        for i in range(0, len(texts), 2):
            cut = [out[i + k] is not texts[i + k] for k in (0, 1)]
            if cut[0] and cut[1]:  # which is longer: grow both until one is whole
                need[i] = need[i + 1] = 2 * max(counts[i], counts[i + 1])
            elif cut[0] or cut[1]:  # the cut text must keep more tokens than the whole one has
                k = 0 if cut[0] else 1
                if counts[i + k] < counts[i + 1 - k] + MARGIN:
                    need[i + k] = counts[i + 1 - k] + 2 * MARGIN
        if not any(need):
            break
        grow = [i for i, n in enumerate(need) if n]
        grown, grown_counts = _grown(tokenizer, [texts[i] for i in grow], [need[i] for i in grow], side,
                                     start=[len(out[i]) for i in grow])
        for i, text, count in zip(grow, grown, grown_counts):
            out[i], counts[i] = text, count
    return list(zip(out[0::2], out[1::2]))


def _grown(tokenizer: Any, texts: list[str], need: list[int], side: str,
           start: list[int] | None = None) -> tuple[list[str], list[int | None]]:
    """(each text or a window of it holding at least `need` tokens, the window's token count or
    None for a whole text); windows start at `need * FIRST_GUESS_CHARS_PER_TOKEN` characters (or
    twice `start`) and double until they hold enough or cover the text."""
    out: list[str] = list(texts)
    counts: list[int | None] = [None] * len(texts)
    size = [2 * s if start else n * FIRST_GUESS_CHARS_PER_TOKEN
            for n, s in zip(need, start or [0] * len(texts))]
    pending = list(range(len(texts)))
    while pending := [i for i in pending if len(texts[i]) > 2 * size[i]]:  # else: the whole text
        cut = {i: _window(texts[i], size[i], side) for i in pending}
        cut = {i: w for i, w in cut.items() if len(w) < len(texts[i])}
        still = []
        for (i, window), count in zip(cut.items(), _token_counts(tokenizer, list(cut.values()))):
            if count >= need[i]:
                out[i], counts[i] = window, count
            else:
                still.append(i)
                size[i] *= 2
        pending = still
    return out, counts


def _window(text: str, size: int, side: str) -> str:
    """`size` characters from one end of `text`, extended to a whitespace character (at most
    `size` characters further) so that no word is cut; the whole text where there is none."""
    if side == "left":
        start, stop = len(text) - size, max(0, len(text) - 2 * size)
        while start > stop and not text[start].isspace():
            start -= 1
        return text[start:] if text[start].isspace() else text
    end, stop = size, min(len(text), 2 * size)
    while end < stop and not text[end].isspace():
        end += 1
    return text[:end] if end < len(text) and text[end].isspace() else text


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
