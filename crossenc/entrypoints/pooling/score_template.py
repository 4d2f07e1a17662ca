"""`/score`, `/rerank` and `LLM.score` for LLM rerankers: the preset's prompt template.

vLLM formats a cross-encoder pair in `CrossEncoderIOProcessor.get_score_prompt`; its own hooks
(`SupportsScoreTemplate`, a classmethod of the model class, and `--chat-template`) see neither
the checkpoint's preset nor the token budget, and a too-long prompt is cut at its end, which
drops the template's suffix. This processor formats the pair with the preset's template and
truncates only the document.

Which prompt a pair gets, first match wins:
1. an explicit chat template (`--chat-template`, `LLM(chat_template=...)`, a request's): vLLM's;
2. the checkpoint's own saved template (a sentence-transformers CrossEncoder that declares
   message inputs; vLLM 0.33 and later read it): vLLM's, so the scores are the ones
   sentence-transformers gives for that checkpoint;
3. the preset's template: this processor.
Models without a preset go through vLLM's code unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from vllm import TokensPrompt

from crossenc import compat, presets


class TemplatedCrossEncoderIOProcessor(compat.scoring().CrossEncoderIOProcessor):
    name = "cross-encoder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        preset = presets.for_config(self.model_config.hf_config)
        self.template = preset.template if preset is not None else None
        # vLLM 0.33+: the template a sentence-transformers checkpoint saved, if any.
        self.saved_template = getattr(self, "saved_chat_template", None)
        if self.template is not None and self.saved_template is not None:
            compat.logger.info(
                "crossenc: %s carries its own saved chat template; pairs are formatted with it, "
                "not with the %s preset's", self.model_config.model, preset.name)

    @property
    def _formats_pairs(self) -> bool:
        return self.template is not None and self.saved_template is None

    def render(self, render_params):
        # The template decides where to cut (the document's end), so a requested truncation
        # side must not cut the prompt again afterwards.
        tok_params = render_params["tok_params"]
        if self._formats_pairs and tok_params.truncation_side is not None:
            tok_params = dataclasses.replace(tok_params, truncation_side=None)
            render_params = {**render_params, "tok_params": tok_params}
        return super().render(render_params)

    def get_score_prompt(
        self,
        data_1,
        data_2,
        encode_kwargs: dict[str, Any],
        chat_template: str | None = None,
        max_tokens_per_query: int = 0,
        max_tokens_per_doc: int = 0,
        chat_template_kwargs: dict[str, Any] | None = None,
    ):
        if self.template is None or chat_template is not None or self.saved_template is not None:
            return super().get_score_prompt(
                data_1,
                data_2,
                encode_kwargs,
                chat_template=chat_template,
                max_tokens_per_query=max_tokens_per_query,
                max_tokens_per_doc=max_tokens_per_doc,
                chat_template_kwargs=chat_template_kwargs,
            )
        utils = compat.scoring_utils()
        query, document, mm_data, _ = utils.parse_score_data(data_1, data_2, self.model_config)
        if mm_data is not None:
            raise ValueError("LLM reranker presets score text only")
        if max_tokens_per_query > 0:
            query = utils.truncate_text_to_tokens(query, self.tokenizer, max_tokens_per_query)
        if max_tokens_per_doc > 0:
            document = utils.truncate_text_to_tokens(document, self.tokenizer, max_tokens_per_doc)
        ids = self.template.token_ids(
            self.tokenizer,
            query,
            document,
            budget=compat.truncation_budget(encode_kwargs, self.model_config.max_model_len),
            instruction=(chat_template_kwargs or {}).get("instruction"),
        )
        return self.tokenizer.decode(ids), TokensPrompt(prompt_token_ids=ids)


def install() -> None:
    """Serve cross-encoder scoring through the templated processor (idempotent).

    vLLM looks the processor up in `ScoringIOProcessors` when it builds a model's pooling
    entrypoints, in the process that serves requests.
    """
    compat.install_scoring_io_processor("cross-encoder", TemplatedCrossEncoderIOProcessor)
