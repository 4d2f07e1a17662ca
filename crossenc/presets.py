"""Presets for LLM rerankers: classifier tokens, conversion method and prompt template.

An LLM reranker was trained on one prompt layout; scored without it the results are close to
random. A preset carries what a checkpoint needs so that `/score` and `/rerank` take a plain
query and documents. Recognised from the checkpoint's name, chosen with `--preset` (convert) or
`"crossenc_preset"` in `--hf-overrides`, and written into converted checkpoints' config.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PRESET_KEY = "crossenc_preset"
# `"crossenc_preset": "none"` turns recognition off for a checkpoint whose name looks like a preset's.
NO_PRESET = "none"


@dataclass(frozen=True)
class ScoreTemplate:
    """A reranker's prompt, built the way its own code builds it: segments tokenized one by one
    and their ids concatenated (joint tokenization can merge across a boundary differently).

    Segment fields: {query}, {instruction}, {document}. Exactly one segment holds the document
    and ends with it, so cutting that segment's ids from the end truncates only the document;
    the instruction, the query and the suffix (which ends where the model predicts the
    classifier token) stay whole.
    """

    segments: tuple[str, ...]
    # How an instruction shows in {instruction}; None: the template takes no instruction.
    instruction_format: str | None = None
    default_instruction: str | None = None
    add_bos: bool = False

    def __post_init__(self):
        holders = [s for s in self.segments if "{document}" in s]
        if len(holders) != 1 or not holders[0].endswith("{document}"):
            raise ValueError("exactly one segment must hold {document}, at its end")

    @property
    def _document_segment(self) -> int:
        return next(i for i, s in enumerate(self.segments) if "{document}" in s)

    def _fields(self, query: str, document: str, instruction: str | None) -> dict[str, str]:
        instruction = instruction if instruction is not None else self.default_instruction
        if instruction is not None and self.instruction_format is None:
            raise ValueError("this reranker's prompt template takes no instruction")
        text = "" if instruction is None else self.instruction_format.format(instruction=instruction)
        return {"query": query, "document": document, "instruction": text}

    def text(self, query: str, document: str, instruction: str | None = None) -> str:
        fields = self._fields(query, document, instruction)
        return "".join(segment.format(**fields) for segment in self.segments)

    def token_ids(
        self,
        tokenizer: Any,
        query: str,
        document: str,
        budget: int | None = None,
        instruction: str | None = None,
    ) -> list[int]:
        """The templated pair's token ids, at most `budget` long, truncating only the document."""
        (ids,) = self.token_ids_batch(tokenizer, [(query, document)], budget, instruction)
        if isinstance(ids, ValueError):
            raise ids
        return ids

    def token_ids_batch(
        self,
        tokenizer: Any,
        pairs: list[tuple[str, str]],
        budget: int | None = None,
        instruction: str | None = None,
    ) -> list[list[int] | ValueError]:
        """`token_ids` of each pair, from one tokenizer call for all their segments; a pair whose
        template does not fit the budget gets the ValueError `token_ids` raises."""
        n = len(self.segments)
        d = self._document_segment
        texts = []
        for query, document in pairs:
            fields = self._fields(query, document, instruction)
            texts += [segment.format(**fields) for segment in self.segments]
            # What the document's segment takes with an empty document: never cut into it.
            texts.append(self.segments[d].format(**{**fields, "document": ""}))
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        bos = [tokenizer.bos_token_id] if self.add_bos else []
        out: list[list[int] | ValueError] = []
        for k in range(len(pairs)):
            pieces = [list(ids) for ids in encoded[k * (n + 1): k * (n + 1) + n]]
            fixed = len(encoded[k * (n + 1) + n])
            if budget is not None and len(bos) + sum(map(len, pieces)) > budget:
                room = budget - len(bos) - sum(len(p) for i, p in enumerate(pieces) if i != d)
                if room < fixed:
                    out.append(ValueError(
                        f"the prompt template with this query takes more than the {budget} tokens "
                        "allowed without the document; only the document is truncated, so shorten "
                        "the query (or the instruction)"))
                    continue
                pieces[d] = pieces[d][:room]
            out.append(bos + [i for piece in pieces for i in piece])
        return out


@dataclass(frozen=True)
class Preset:
    name: str
    checkpoints: str
    model_type: str  # the transformers model_type the checkpoints have
    tokens: tuple[str, ...]
    method: str
    template: ScoreTemplate
    pattern: str  # regex that recognises the checkpoint in its name or path

    def overrides(self) -> dict[str, Any]:
        """The `--hf-overrides` that serve the CausalLM checkpoint as this reranker."""
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as SEQ_CLS_NAMES,
        )

        from crossenc.config.conversion import METHOD_KEY, TOKENS_KEY

        return {
            "architectures": [SEQ_CLS_NAMES[self.model_type]],
            TOKENS_KEY: list(self.tokens),
            METHOD_KEY: self.method,
            PRESET_KEY: self.name,
        }


# The three templates as the checkpoints' own code builds them (model cards; FlagEmbedding's
# LLM reranker; the mxbai-rerank package).
_QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
_MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\n"
)
_MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:"
)
_MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
_BGE_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the "
    "query by providing a prediction of either 'Yes' or 'No'."
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "qwen3-reranker",
            "Qwen/Qwen3-Reranker-{0.6B,4B,8B}",
            model_type="qwen3",
            tokens=("no", "yes"),
            method="from_2_way_softmax",
            template=ScoreTemplate(
                segments=(
                    _QWEN3_PREFIX,
                    "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
                    _QWEN3_SUFFIX,
                ),
                instruction_format="{instruction}",
                default_instruction=(
                    "Given a web search query, retrieve relevant passages that answer the query"
                ),
            ),
            pattern=r"qwen3-reranker",
        ),
        Preset(
            "bge-reranker-v2-gemma",
            "BAAI/bge-reranker-v2-gemma",
            model_type="gemma",
            tokens=("Yes",),
            method="no_post_processing",
            # BOS, query and passage joined by "\n" (no pad/sep token), then the prompt.
            template=ScoreTemplate(
                segments=("A: {query}", "\n", "B: {document}", "\n", _BGE_PROMPT), add_bos=True
            ),
            pattern=r"bge-reranker-v2-gemma",
        ),
        Preset(
            "mxbai-rerank-v2",
            "mixedbread-ai/mxbai-rerank-{base,large}-v2",
            model_type="qwen2",
            tokens=("0", "1"),
            method="from_2_way_softmax",
            template=ScoreTemplate(
                segments=(
                    _MXBAI_PREFIX,
                    "{instruction}query: {query}",
                    "\n",
                    "document: {document}",
                    "\n",
                    _MXBAI_TASK,
                    _MXBAI_SUFFIX,
                ),
                instruction_format="instruction: {instruction}\n",
            ),
            pattern=r"mxbai-rerank-(base|large)-v2",
        ),
    )
}


def get(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preset {name!r}; known presets: {', '.join(PRESETS)} "
            f"(or {NO_PRESET!r} for none)"
        ) from None


def recognise(*names: str | None) -> Preset | None:
    """The preset whose checkpoints these names (model id, path, `_name_or_path`) refer to."""
    for name in filter(None, names):
        for preset in PRESETS.values():
            if re.search(preset.pattern, str(name), re.IGNORECASE):
                return preset
    return None


def for_config(hf_config: Any, *names: str | None, preset_name: str | None = None) -> Preset | None:
    """The preset for a checkpoint: named (`preset_name`, else the config's `crossenc_preset`),
    else recognised from its names (model id, path, `_name_or_path`).

    A named preset must fit the checkpoint's model_type (an error otherwise); a name that merely
    looks like a preset's checkpoint, on another model_type, gives no preset.
    """
    named = preset_name if preset_name is not None else getattr(hf_config, PRESET_KEY, None)
    if named == NO_PRESET:
        return None
    model_type = getattr(hf_config, "model_type", None)
    if named is not None:
        preset = get(named)
        if preset.model_type != model_type:
            raise ValueError(
                f"preset {preset.name} is for {preset.model_type} checkpoints "
                f"({preset.checkpoints}); this one is {model_type}"
            )
        return preset
    preset = recognise(*names, getattr(hf_config, "_name_or_path", None))
    return preset if preset is not None and preset.model_type == model_type else None
