"""A batch of texts or pairs tokenized in one call of the Rust tokenizer's `encode_batch_fast`.

transformers' fast tokenizers call `encode_batch`, which also computes every token's character
offsets, and then build a Python dict per text; scoring needs only the ids and token types.
`PairEncoder` makes the same ids with `encode_batch_fast` (no offsets) on a private copy of the
tokenizer's Rust backend, set up as transformers sets its own up for the same arguments
(truncation strategy, length, side; no padding; special tokens as the tokenizer splits them).

It applies only where transformers' own code makes the ids: a `TokenizersBackend` whose call,
strategy resolution, truncation set-up and batch encoding are transformers' (vLLM's thread-pool
and caching wrappers delegate to them). Elsewhere `PairEncoder.of` gives None and the caller
calls the tokenizer. The private copy (a second load of the tokenizer: ~0.4 s and ~10 MiB for
a 128k-piece vocabulary) is made in a thread of its own; until it is `ready`, the caller calls
the tokenizer.
"""

from __future__ import annotations

import threading
from typing import Any

# What must be transformers' own for the ids to be the same.
_TRANSFORMERS_METHODS = ("__call__", "_encode_plus", "_get_padding_truncation_strategies",
                         "set_truncation_and_padding", "_convert_encoding")


def _transformers_defines(cls: type, name: str) -> bool:
    for klass in cls.__mro__:
        if klass.__module__.startswith("vllm."):
            continue  # vLLM's wrappers route the call to a tokenizer of the same class
        if name in vars(klass):
            return klass.__module__.startswith("transformers.tokenization_utils")
    return False


class PairEncoder:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.token_types = "token_type_ids" in tokenizer.model_input_names
        self._backend = None  # the private copy
        self._lock = threading.Lock()
        self._made = threading.Event()
        serialized = tokenizer.backend_tokenizer.to_str()  # read here, loaded beside the caller's work
        threading.Thread(target=self._load_copy, args=(serialized,), name="crossenc-pair-encoder",
                         daemon=True).start()

    def _load_copy(self, serialized: str) -> None:
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_str(serialized)
            backend.no_padding()
            self._backend = backend
        finally:
            self._made.set()

    def ready(self, timeout: float | None = 0) -> bool:
        """Whether its copy of the tokenizer is made (waiting up to `timeout` s; None: until it is)."""
        self._made.wait(timeout)
        return self._backend is not None

    @classmethod
    def of(cls, tokenizer: Any) -> PairEncoder | None:
        try:
            from transformers.tokenization_utils_tokenizers import TokenizersBackend
        except ImportError:  # transformers 4: its fast tokenizers take the tokenizer's own call
            return None
        if not isinstance(tokenizer, TokenizersBackend) or hasattr(tokenizer, "_switch_to_input_mode"):
            return None
        if not all(_transformers_defines(type(tokenizer), name) for name in _TRANSFORMERS_METHODS):
            return None
        if not hasattr(tokenizer.backend_tokenizer, "encode_batch_fast"):
            return None
        return cls(tokenizer)

    def __call__(self, texts: list[str], text_pairs: list[str] | None,
                 encode_kwargs: dict[str, Any]) -> list[tuple[list[int], list[int] | None]]:
        """(ids, token types or None) per text or pair, as `tokenizer(text=texts,
        text_pair=text_pairs, **encode_kwargs)` makes them."""
        from transformers.tokenization_utils_base import PaddingStrategy, TruncationStrategy

        kwargs = dict(encode_kwargs)
        add_special_tokens = kwargs.pop("add_special_tokens", True)
        padding, truncation, max_length, rest = self.tokenizer._get_padding_truncation_strategies(
            padding=kwargs.pop("padding", False), truncation=kwargs.pop("truncation", None),
            max_length=kwargs.pop("max_length", None), verbose=False)
        if padding != PaddingStrategy.DO_NOT_PAD or rest or kwargs:
            raise ValueError(f"PairEncoder takes truncation, max_length and add_special_tokens, not {encode_kwargs}")
        inputs = list(texts) if text_pairs is None else list(zip(texts, text_pairs))
        backend = self._backend
        if backend is None:
            raise RuntimeError("PairEncoder: its copy of the tokenizer is not made yet (see ready())")
        with self._lock:
            if truncation == TruncationStrategy.DO_NOT_TRUNCATE:
                backend.no_truncation()
            else:
                backend.enable_truncation(max_length, stride=0, strategy=truncation.value,
                                          direction=self.tokenizer.truncation_side)
            backend.encode_special_tokens = bool(self.tokenizer.split_special_tokens)
            encodings = backend.encode_batch_fast(inputs, add_special_tokens=add_special_tokens)
        return [(e.ids, e.type_ids if self.token_types else None) for e in encodings]

