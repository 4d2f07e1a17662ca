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
    """prefix + document + suffix; the prefix holds the query and the instruction.

    Only the document is ever truncated: the instruction, the query and the suffix (which ends
    where the model predicts the classifier token) stay whole.
    """

    prefix: str  # fields: {query}, {instruction}
    suffix: str
    # How an instruction shows in {instruction}; None: the template takes no instruction.
    instruction_format: str | None = None
    default_instruction: str | None = None
    add_bos: bool = False

    def head(self, query: str, instruction: str | None = None) -> str:
        instruction = instruction if instruction is not None else self.default_instruction
        if instruction is not None and self.instruction_format is None:
            raise ValueError("this reranker's prompt template takes no instruction")
        text = "" if instruction is None else self.instruction_format.format(instruction=instruction)
        return self.prefix.format(query=query, instruction=text)

    def text(self, query: str, document: str, instruction: str | None = None) -> str:
        return self.head(query, instruction) + document + self.suffix

    def token_ids(
        self,
        tokenizer: Any,
        query: str,
        document: str,
        budget: int | None = None,
        instruction: str | None = None,
    ) -> list[int]:
        """The templated pair's token ids, at most `budget` long, truncating only the document.

        The whole text is tokenized at once (as the model saw it in training); the document's
        tokens are found through the character offsets and cut from their end when needed.
        """
        head = self.head(query, instruction)
        text = head + document + self.suffix
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        doc_start, doc_end = len(head), len(head) + len(document)
        in_doc = [i for i, (s, e) in enumerate(offsets) if e > doc_start and s < doc_end]
        first, last = (in_doc[0], in_doc[-1] + 1) if in_doc else (len(ids), len(ids))
        # A token that starts inside the head (e.g. "Ġword" after "Document:") belongs to the
        # document only from the document's first token on.
        bos = [tokenizer.bos_token_id] if self.add_bos else []
        fixed = len(bos) + first + (len(ids) - last)
        if budget is not None and fixed + (last - first) > budget:
            if fixed > budget:
                raise ValueError(
                    f"the prompt template with this query takes {fixed} tokens without the "
                    f"document, more than the {budget} allowed; only the document is truncated, "
                    "so shorten the query (or the instruction)"
                )
            ids = ids[: first + budget - fixed] + ids[last:]
        return bos + ids


@dataclass(frozen=True)
class Preset:
    name: str
    checkpoints: str
    model_type: str  # the transformers model_type the checkpoints have
    tokens: tuple[str, ...]
    method: str
    template: ScoreTemplate
    pattern: str  # regex that recognises the checkpoint in its name or path

    def overrides(self, architecture: str) -> dict[str, Any]:
        """The `--hf-overrides` that serve the CausalLM checkpoint as this reranker."""
        return {
            "architectures": [architecture],
            "classifier_from_token": list(self.tokens),
            "method": self.method,
            PRESET_KEY: self.name,
        }


_QWEN3_SYSTEM = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
    'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n"
)
_MXBAI_SYSTEM = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n<|im_start|>user\n"
)
_MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. "
    "For each query-document pair, carefully analyze the semantic relationship between them, "
    "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\n"
    "Relevance:"
)
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
                prefix=_QWEN3_SYSTEM + "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: ",
                suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
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
            # Query and passage joined without a separator token; the prompt comes last.
            template=ScoreTemplate(prefix="A: {query}\nB: ", suffix="\n" + _BGE_PROMPT, add_bos=True),
            pattern=r"bge-reranker-v2-gemma",
        ),
        Preset(
            "mxbai-rerank-v2",
            "mixedbread-ai/mxbai-rerank-{base,large}-v2",
            model_type="qwen2",
            tokens=("0", "1"),
            method="from_2_way_softmax",
            template=ScoreTemplate(
                prefix=_MXBAI_SYSTEM + "{instruction}query: {query}\ndocument: ",
                suffix="\n" + _MXBAI_TASK + "<|im_end|>\n<|im_start|>assistant\n",
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


def for_config(hf_config: Any, *names: str | None) -> Preset | None:
    """The preset a config names (`crossenc_preset`), else the one its names are recognised as."""
    named = getattr(hf_config, PRESET_KEY, None)
    if named == NO_PRESET:
        return None
    if named is not None:
        return get(named)
    return recognise(*names, getattr(hf_config, "_name_or_path", None))
