"""`/score`, `/rerank` and `LLM.score` for cross-encoders: the pairs of a call tokenized at
once, and the preset's prompt template for LLM rerankers.

vLLM renders every pair on its own: a tokenizer call per pair, the ids decoded back to text, the
text parsed as prompt content, and online a hop to the renderer thread per pair. This processor
tokenizes all text pairs of an `LLM.score` call or of a `/score` or `/rerank` request in one
tokenizer call, with the same arguments, and hands each pair's ids (and token types, where the
model has a token-type embedding) to vLLM's own rendering, which checks lengths, compresses
token types and builds the engine input as for any pair; online, a request's pairs are tokenized
and rendered in one hop to vLLM's renderer thread, off the event loop. The ids are exactly
vLLM's. Pairs that are
not plain text, or that ask for a chat template, a saved template, per-query or per-document
token limits or padding, go through vLLM's per-pair code. For crossenc's DeBERTa cross-encoders
the rendered pairs then share engine requests (`pair_packing`),
and each packed request's output is split back into its pairs' outputs; `LLM.score` makes them a
chunk of pairs at a time and hands each to the engine as soon as it is made (`offline`).

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
Models crossenc does not serve (vLLM's own architectures without a preset) go through vLLM's
code unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import os
import re
import threading
from typing import Any

from vllm import TokensPrompt

from crossenc import compat, presets
from crossenc.entrypoints.pooling import offline, text_window
from crossenc.entrypoints.pooling.pair_encoder import PairEncoder
from crossenc.model_executor.layers import pair_packing
from crossenc.model_executor.models import registry


# Ids a pair was given by `_pretokenize`, from `render` to the `get_score_prompt` it calls.
_rendering = threading.local()
_TOKENS_KEY = "crossenc_tokens"
# The pairs of one online request, rendered together (`_RequestRendering`).
_REQUEST_KEY = "crossenc_request"
# Offline: the pairs one engine request carries (`pair_packing`), rendered together.
_PACK_KEY = "crossenc_pack"
_LENS_KEY = "crossenc_pack_lens"  # its pairs' lengths once rendered


# Offline, a call's pairs are tokenized this many at a time, while the engine runs the requests
# made from the earlier ones (`offline.run_streamed`).
STREAM_CHUNK_PAIRS = 32

_SURROGATE = re.compile("[\ud800-\udfff]")


def _text_problem(render_params) -> str | None:
    """Why a pair cannot be scored whatever the model, in words, or None."""
    return _pair_problem(render_params.get("data_1"), render_params.get("data_2"),
                         getattr(render_params["tok_params"], "truncate_prompt_tokens", None))


def _pair_problem(query, document, truncate: int | None) -> str | None:
    if truncate == 0:
        return ("truncate_prompt_tokens=0 leaves no tokens to score: pass a positive number of "
                "tokens, or -1 for the model's maximum")
    for name, text in (("query", query), ("document", document)):
        if isinstance(text, str) and not text.isascii() and (m := _SURROGATE.search(text)):
            return (f"the {name} holds a lone UTF-16 surrogate ({m.group()!a} at character {m.start()}), "
                    "which is not text: send valid Unicode (a JSON \\uXXXX escape of a surrogate "
                    "must come in a high-low pair)")
    return None


class _RequestRendering:
    """The pairs of one /score or /rerank request, tokenized and rendered in one hop to vLLM's
    renderer thread: vLLM awaits each pair's rendering on its own, and the first await starts
    the whole request's, off the event loop."""

    def __init__(self, processor, requests):
        self.processor = processor
        self.requests = requests
        self.index = {id(rp): i for i, rp in enumerate(requests)}
        self.future: asyncio.Future | None = None

    @classmethod
    def attach(cls, processor, requests) -> _RequestRendering:
        """One rendering for `requests` (a request's render params), reachable from each."""
        rendering = cls(processor, requests)
        for rp in requests:
            rp[_REQUEST_KEY] = rendering
        return rendering

    def run(self) -> list:
        self.processor._pretokenize(self.requests)
        results = []
        for rp in self.requests:
            try:
                results.append(self.processor.render(rp))
            except Exception as e:  # noqa: BLE001 - raised again by that pair's await
                results.append(e)
        return results

    async def result(self, render_params):
        if self.future is None:
            self.future = asyncio.get_running_loop().run_in_executor(self.processor._executor, self.run)
        results = await self.future
        result = results[self.index[id(render_params)]]
        if isinstance(result, Exception):
            raise result
        return result


class TemplatedCrossEncoderIOProcessor(compat.scoring().CrossEncoderIOProcessor):
    name = "cross-encoder"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        preset = presets.for_config(self.model_config.hf_config)
        self.template = preset.template if preset is not None else None
        # The models crossenc serves; vLLM's own keep vLLM's scoring path unchanged.
        self.batches_pairs = preset is not None or self.model_config.architecture in registry.all_specs()
        # Token types reach a model only through a token-type embedding (DeBERTa-v3 and every
        # CausalLM have none); sent anyway, each pair costs a deep copy of its pooling parameters
        # and the engine expands them per token, for nothing.
        self.reads_token_types = (getattr(self.model_config.hf_config, "type_vocab_size", 0) or 0) > 0
        if self.batches_pairs and getattr(self, "tokenizer", None) is not None:
            self._pair_encoder = PairEncoder.of(self.tokenizer)  # its copy of the tokenizer loads meanwhile
        # The tokenizer is one Rust object that must not be reconfigured while another thread
        # encodes with it ("Already borrowed"): `_streamed_packs`' thread tokenizes while the
        # caller renders, and the pairs vLLM renders on its own wait for it (`render`).
        self._tokenizer_lock = threading.Lock()
        # vLLM renders each pair of an online request in its own hop to the renderer thread
        # (`render_async`); crossenc renders a request's pairs in one.
        self._render_pair_async = getattr(self, "render_async", None)
        self.renders_requests = (self.batches_pairs and self._render_pair_async is not None
                                 and hasattr(self, "_executor"))
        if self.renders_requests:
            self.render_async = self._render_request_async
        # Several pairs per engine request (`pair_packing`): crossenc's encoder cross-encoders,
        # whose forward takes each pair's positions; not with token types (one split per request),
        # and only on an engine that splits them.
        spec = registry.crossenc_archs().get(self.model_config.architecture)
        self.packs_pairs = (spec is not None and spec.head == "seq_cls" and self.template is None
                            and not self.reads_token_types and pair_packing.enabled()
                            and pair_packing.engine_splits_pairs(self.vllm_config))
        if self.packs_pairs:  # online: vLLM's pooling servers hand over a request's rendered pairs
            compat.add_scoring_preprocessing_hook()
            # Requests longer than max_model_len where the engine takes them (each pair within it).
            pair_packing.accept_long_requests(self.model_config)
        # `LLM.score`: each packed request to the engine as soon as it is made.
        self.streams_offline = self.packs_pairs and compat.add_offline_loop_hook(
            offline.run_streamed, offline.StreamedRequests)
        # vLLM 0.33+: the template a sentence-transformers checkpoint saved, if any.
        self.saved_template = getattr(self, "saved_chat_template", None)
        if self.template is not None and self.saved_template is not None:
            compat.logger.info(
                "crossenc: %s carries its own saved chat template; pairs are formatted with it, "
                "not with the %s preset's", self.model_config.model, preset.name)

    @property
    def _formats_pairs(self) -> bool:
        return self.template is not None and self.saved_template is None

    # --- One tokenizer call for the pairs of a call or request --------------------------------

    def get_request_factory_online(self, ctx):
        requests = super().get_request_factory_online(ctx)
        if self.renders_requests:
            _RequestRendering.attach(self, requests)
        else:
            self._pretokenize(requests)
        return requests

    async def _render_request_async(self, render_params):
        rendering = render_params.get(_REQUEST_KEY)
        if rendering is None:
            return await self._render_pair_async(render_params)
        return await rendering.result(render_params)

    def get_request_factory_offline(self, ctx):
        factory, num_requests = super().get_request_factory_offline(ctx)

        if self.packs_pairs:
            requests = list(factory())
            self._offline_packs = []  # `post_process_offline` splits the outputs, which come in this order
            if self.streams_offline:
                return offline.StreamedRequests(lambda: self._streamed_packs(requests), _pairs_in), len(requests)
            self._pretokenize(requests)
            self._offline_packs = packs = self._packs(requests)
            return (lambda: iter(packs)), len(packs)

        def pretokenized():
            requests = list(factory())
            self._pretokenize(requests)
            yield from requests

        return pretokenized, num_requests

    # --- Several pairs per engine request (`pair_packing`) -----------------------------------

    def _packs(self, requests) -> list:
        """The render params of an offline call, consecutive tokenized pairs packed into one
        (`_PACK_KEY`) up to `pair_packing.request_budget` tokens; the others as they are."""
        return [_packed(requests, g) for g in self._pack_groups(requests)]

    def _pack_groups(self, requests) -> list[list[int]]:
        lengths = [len(rp[_TOKENS_KEY][0]) if _TOKENS_KEY in rp else None for rp in requests]
        return pair_packing.pack_runs(lengths, [_pack_key(rp) for rp in requests],
                                      pair_packing.request_budget(self.model_config),
                                      self.model_config.max_model_len)

    def _streamed_packs(self, requests):
        """`_packs(requests)` made as the engine loop asks for them (`offline.run_streamed`): the
        pairs tokenized STREAM_CHUNK_PAIRS at a time on the processor's tokenizer thread (the
        Rust tokenizer releases the GIL), so the next chunks are tokenized while the caller
        packs and hands on the earlier ones; each packed request is handed on once no later pair
        can join it. The first chunk's pairs go at once, as requests of their own: the engine
        starts on them while the rest is tokenized, instead of waiting for a whole request's
        worth (~100 pairs)."""
        chunks = [requests[start:start + STREAM_CHUNK_PAIRS] for start in range(0, len(requests), STREAM_CHUNK_PAIRS)]
        tokenized = [self._tokenizer_thread().submit(self._pretokenize_alone, chunk) for chunk in chunks]
        pending: list = []
        try:
            for n, (chunk, done) in enumerate(zip(chunks, tokenized)):
                done.result()
                pending += chunk
                groups = self._pack_groups(pending)
                flush = n == 0 or n == len(chunks) - 1
                for group in groups if flush else groups[:-1]:  # more pairs can join only the last group
                    self._offline_packs.append(pack := _packed(pending, group))
                    yield pack
                pending = [] if flush else [pending[k] for k in groups[-1]]
        finally:  # the caller stopped early (a request failed): no more tokenizing for it
            for done in tokenized:
                done.cancel()

    def _pretokenize_alone(self, requests) -> None:
        """`_pretokenize` on `_streamed_packs`' thread, while no pair is rendered by vLLM's own code."""
        with self._tokenizer_lock:
            self._pretokenize(requests)

    def _tokenizer_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        """One thread that tokenizes an `LLM.score` call's chunks in order (`_streamed_packs`);
        a new one in a process forked since (a fork copies the executor but not its thread)."""
        executor, pid = getattr(self, "_tokenizer_executor", (None, None))
        if executor is None or pid != os.getpid():
            executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="crossenc-tokenize")
            self._tokenizer_executor = executor, os.getpid()
        return executor

    def pack_engine_inputs(self, ctx) -> None:
        """Online (after vLLM renders a request's pairs): consecutive pairs packed into one
        engine request up to `pair_packing.request_budget` tokens; `post_process_online` splits
        the outputs."""
        inputs = ctx.engine_inputs
        if not self.packs_pairs or not inputs or len(inputs) < 2:
            return
        per_pair_params = isinstance(ctx.pooling_params, list)  # vLLM 0.26
        if per_pair_params:  # engine inputs are prompts, parameters a list beside them
            items = [dict(prompts=p, params=q, lora_requests=None, priorities=None)
                     for p, q in zip(inputs, ctx.pooling_params)]
        else:
            items = list(inputs)
        packed, pair_lens = self._pack_items(items)
        if len(packed) == len(items):
            return
        ctx.crossenc_pair_lens = pair_lens
        if per_pair_params:
            ctx.engine_inputs = [item["prompts"] for item in packed]
            ctx.pooling_params = [item["params"] for item in packed]
        else:
            ctx.engine_inputs = packed

    def _pack_items(self, items) -> tuple[list, list]:
        """Engine inputs ({prompts, params, lora_requests, priorities}) packed; each packed
        one's pair lengths (None for an input left alone)."""
        lengths = [len(ids) if (ids := item["prompts"].get("prompt_token_ids")) else None for item in items]
        packed, pair_lens = [], []
        for group in pair_packing.pack_runs(lengths, [_pack_key(item) for item in items],
                                            pair_packing.request_budget(self.model_config),
                                        self.model_config.max_model_len):
            if len(group) == 1:
                packed.append(items[group[0]])
                pair_lens.append(None)
            else:
                packed.append(merged := _merged([items[k] for k in group]))
                pair_lens.append(pair_packing.pair_lens(merged["params"]))
        return packed, pair_lens

    def _pre_process(self, scoring_data, tok_params, pooling_params, chat_template=None,
                     max_tokens_per_query=0, max_tokens_per_doc=0, prompt_extras=None):
        """vLLM 0.26 (online; later releases render through `render`): the request's pairs
        tokenized in one call, then vLLM's per-pair loop, whose `get_score_prompt` takes each
        pair's ids in order."""
        data_1, data_2 = scoring_data.data_1, scoring_data.data_2
        if len(data_1) == 1:
            data_1 = data_1 * len(data_2)
        requests = [dict(data_1=q, data_2=d, tok_params=tok_params, chat_template=chat_template,
                         max_tokens_per_query=max_tokens_per_query, max_tokens_per_doc=max_tokens_per_doc,
                         prompt_extras=prompt_extras) for q, d in zip(data_1, data_2)]
        self._pretokenize(requests)
        _rendering.queue = collections.deque(rp.get(_TOKENS_KEY) for rp in requests)
        try:
            return super()._pre_process(scoring_data, tok_params, pooling_params, chat_template,
                                        max_tokens_per_query, max_tokens_per_doc, prompt_extras)
        finally:
            _rendering.queue = None

    def pre_process_online(self, ctx):
        """vLLM 0.26: a request's pairs rendered by vLLM (`_pre_process`), then packed."""
        result = super().pre_process_online(ctx)
        self.pack_engine_inputs(ctx)
        return result

    def post_process_online(self, ctx):
        pair_lens = getattr(ctx, "crossenc_pair_lens", None)
        if pair_lens is not None and ctx.final_res_batch:
            ctx.final_res_batch = _split_outputs(ctx.final_res_batch, pair_lens)
        return super().post_process_online(ctx)

    def post_process_offline(self, ctx):
        packs, self._offline_packs = getattr(self, "_offline_packs", None), None
        if packs is not None and len(packs) == len(ctx.outputs):
            ctx.outputs = _split_outputs(ctx.outputs, [rp.get(_LENS_KEY) for rp in packs])
        return super().post_process_offline(ctx)

    def _batch_key(self, render_params) -> tuple | None:
        """What pairs share to be tokenized in one call, or None for vLLM's per-pair path."""
        rp = render_params
        if not (isinstance(rp.get("data_1"), str) and isinstance(rp.get("data_2"), str)):
            return None
        if _text_problem(rp) is not None:
            return None  # `render` refuses it
        # Not every release's render params carry per-query/per-document limits.
        if rp.get("chat_template") is not None or self.saved_template is not None:
            return None
        if rp.get("max_tokens_per_query") or rp.get("max_tokens_per_doc"):
            return None
        if self.template is None and getattr(self, "supports_score_template", False):
            return None
        encode_kwargs = self._tok_params(rp).get_encode_kwargs()
        if encode_kwargs.get("padding"):
            return None
        instruction = ((rp.get("prompt_extras") or {}).get("chat_template_kwargs") or {}).get("instruction")
        return repr(sorted(encode_kwargs.items())), instruction

    def _pretokenize(self, requests) -> None:
        if not self.batches_pairs:
            return
        groups: dict[tuple, list] = {}
        for rp in requests:
            if (key := self._batch_key(rp)) is not None:
                groups.setdefault(key, []).append(rp)
        for (_, instruction), group in groups.items():
            tok_params = self._tok_params(group[0])
            encode_kwargs = tok_params.get_encode_kwargs()
            pairs = [(rp["data_1"], rp["data_2"]) for rp in group]
            try:
                pairs = self._bounded(pairs, tok_params, encode_kwargs)
                tokens = self._tokenize_pairs(pairs, encode_kwargs, instruction)
            except ValueError:
                continue  # each pair raises it again, as vLLM's path does
            for rp, pair_tokens in zip(group, tokens):
                if pair_tokens is not None:
                    rp[_TOKENS_KEY] = pair_tokens

    def _bounded(self, pairs, tok_params, encode_kwargs):
        """The pairs with each oversized text cut to the part whose tokens can reach the engine
        (`text_window`): the same ids, at the cost of a maximum-length text."""
        if self._formats_pairs:  # the template keeps the document's first tokens within the budget
            budget = compat.truncation_budget(encode_kwargs, self.model_config.max_model_len)
            return text_window.pair_windows(self.tokenizer, pairs, budget)
        keep, side = self._kept_tokens(tok_params, encode_kwargs)
        if keep is None:
            return pairs
        if not self.use_sep_token:  # read as one text
            return [(text, "") for text in text_window.windows(self.tokenizer, [q + d for q, d in pairs], keep, side)]
        # The tokenizer's own truncation of a pair depends on which text is longer; when it only
        # bounds a prompt that is then refused (max_model_len + 1), a cut pair is refused either way.
        keep_order = bool(encode_kwargs.get("truncation")) and keep <= self.model_config.max_model_len
        return text_window.pair_windows(self.tokenizer, pairs, keep, side, keep_order)

    def _kept_tokens(self, tok_params, encode_kwargs) -> tuple[int | None, str]:
        """How many tokens of each text of a pair can reach the engine, from which end: the
        tokenizer's truncation (`max_length`, vLLM's bound when it refuses a longer prompt), or
        vLLM's own cut of the tokens to `truncate_prompt_tokens` from the side a request asked."""
        if encode_kwargs.get("truncation") and encode_kwargs.get("max_length") is not None:
            return encode_kwargs["max_length"], getattr(self.tokenizer, "truncation_side", "right")
        keep = getattr(tok_params, "truncate_prompt_tokens", None)
        side = getattr(tok_params, "truncation_side", None)
        if keep is None or side is None:
            return None, "right"
        if keep < 0:  # the model's maximum (`max_truncation_tokens` from vLLM 0.27)
            keep = getattr(tok_params, "max_truncation_tokens", None) or tok_params.max_input_tokens
        return keep, side

    def _tokenize_pairs(self, pairs, encode_kwargs, instruction):
        """(ids, token types or None) per pair, as `get_score_prompt` makes them; None for a
        pair it would refuse."""
        if self._formats_pairs:
            budget = compat.truncation_budget(encode_kwargs, self.model_config.max_model_len)
            ids = self.template.token_ids_batch(self.tokenizer, pairs, budget, instruction)
            return [None if isinstance(i, ValueError) else (i, None) for i in ids]
        if not self.use_sep_token:  # an LLM read as one text: query and document without a separator
            return self._encode([q + d for q, d in pairs], None, encode_kwargs)
        # transformers encodes a pair whose second text is empty as the first text alone.
        out = [None] * len(pairs)
        for has_document in (True, False):
            index = [i for i, (_, d) in enumerate(pairs) if bool(d) == has_document]
            if index:
                encoded = self._encode([pairs[i][0] for i in index],
                                       [pairs[i][1] for i in index] if has_document else None, encode_kwargs)
                for i, tokens in zip(index, encoded):
                    out[i] = tokens
        return out

    def _encode(self, texts, text_pairs, encode_kwargs):
        if not hasattr(self, "_pair_encoder"):  # one Rust call without offsets, where it makes the same ids
            self._pair_encoder = PairEncoder.of(self.tokenizer)
        if self._pair_encoder is not None and self._pair_encoder.ready():
            encoded = self._pair_encoder(texts, text_pairs, encode_kwargs)
            return [(ids, types if self.reads_token_types else None) for ids, types in encoded]
        encoded = self.tokenizer(text=texts, text_pair=text_pairs, **encode_kwargs)
        types = encoded.get("token_type_ids") if self.reads_token_types else None
        return [(list(ids), None if types is None else list(types[i]))
                for i, ids in enumerate(encoded["input_ids"])]

    def _tok_params(self, render_params):
        """A pair's tokenization parameters; a template cuts the document itself, so a requested
        truncation side does not apply to its prompts."""
        tok_params = render_params["tok_params"]
        if self._formats_pairs and getattr(tok_params, "truncation_side", None) is not None:
            return dataclasses.replace(tok_params, truncation_side=None)
        return tok_params

    def render(self, render_params):
        if (members := render_params.get(_PACK_KEY)) is not None:
            merged = _merged([self.render(rp) for rp in members])
            render_params[_LENS_KEY] = pair_packing.pair_lens(merged["params"])
            return merged
        # The template decides where to cut (the document's end), so a requested truncation
        # side must not cut the prompt again afterwards.
        if self.batches_pairs and (problem := _text_problem(render_params)) is not None:
            raise ValueError(problem)
        tok_params = self._tok_params(render_params)
        if tok_params is not render_params["tok_params"]:
            render_params = {**render_params, "tok_params": tok_params}
        _rendering.tokens = tokens = render_params.get(_TOKENS_KEY)
        try:
            if tokens is not None:  # tokenized with its call's other pairs: no tokenizer here
                return super().render(render_params)
            with self._tokenizer_lock:  # vLLM's own rendering tokenizes the pair
                return super().render(render_params)
        finally:
            _rendering.tokens = None

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
        queue = getattr(_rendering, "queue", None)
        tokens = queue.popleft() if queue else getattr(_rendering, "tokens", None)
        if tokens is not None:  # tokenized with the other pairs of its call (`_pretokenize`)
            _rendering.tokens = None
            ids, token_type_ids = tokens
            prompt = TokensPrompt(prompt_token_ids=ids)
            if token_type_ids is not None:
                prompt["token_type_ids"] = token_type_ids
            return None, prompt
        if self.batches_pairs and isinstance(data_1, str) and isinstance(data_2, str):
            # A pair `_pretokenize` left to vLLM's per-pair path: tokenized on its own.
            truncate = encode_kwargs.get("max_length") if encode_kwargs.get("truncation") else None
            if (problem := _pair_problem(data_1, data_2, truncate)) is not None:
                raise ValueError(problem)
            (data_1, data_2), = self._bounded([(data_1, data_2)], None, encode_kwargs)
        if self.template is None or chat_template is not None or self.saved_template is not None:
            text, prompt = super().get_score_prompt(
                data_1,
                data_2,
                encode_kwargs,
                chat_template=chat_template,
                max_tokens_per_query=max_tokens_per_query,
                max_tokens_per_doc=max_tokens_per_doc,
                chat_template_kwargs=chat_template_kwargs,
            )
            if self.batches_pairs and not self.reads_token_types:
                prompt.pop("token_type_ids", None)  # as `_encode` leaves them out
            return text, prompt
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


def _pack_key(render_params) -> tuple:
    """What the pairs of one engine request must share."""
    return (id(render_params["params"]), render_params.get("lora_requests"), render_params.get("priorities"))


def _packed(requests, group: list[int]) -> dict:
    """The render params of one engine request: a pair's own, or several pairs' (`_PACK_KEY`)."""
    if len(group) == 1:
        return requests[group[0]]
    return {**requests[group[0]], _PACK_KEY: [requests[k] for k in group]}


def _pairs_in(render_params) -> int:
    return len(render_params.get(_PACK_KEY) or (render_params,))


def _merged(members) -> dict:
    """One engine input carrying the rendered pairs `members`, back to back."""
    first = members[0]
    prompt = dict(first["prompts"])
    prompt.pop("prompt", None)  # the first pair's text
    prompt["prompt_token_ids"] = [t for m in members for t in m["prompts"]["prompt_token_ids"]]
    params = first["params"].clone()
    params.extra_kwargs = {**(params.extra_kwargs or {}), pair_packing.PAIRS_KEY:
                           [len(m["prompts"]["prompt_token_ids"]) for m in members]}
    return {**first, "prompts": prompt, "params": params}


def _split_outputs(outputs, pair_lens) -> list:
    """Each packed request's output (its pairs' outputs stacked) as one output per pair, in
    order; `pair_lens`: per output, its pairs' lengths, or None for one pair."""
    split = []
    for out, lens in zip(outputs, pair_lens):
        data = getattr(getattr(out, "outputs", None), "data", None)
        if lens is None or data is None or getattr(out, "error", None) is not None:
            split.append(out)
            continue
        if data.shape[0] != len(lens):
            raise RuntimeError(f"a packed request of {len(lens)} pairs came back with {data.shape[0]} outputs")
        start = 0
        for row, n in zip(data, lens):
            pair = copy.copy(out)
            pair.outputs = copy.copy(out.outputs)
            pair.outputs.data = row
            pair.prompt_token_ids = out.prompt_token_ids[start:start + n]
            start += n
            split.append(pair)
    return split


def install() -> None:
    """Serve cross-encoder scoring through the templated processor (idempotent).

    vLLM looks the processor up in `ScoringIOProcessors` when it builds a model's pooling
    entrypoints, in the process that serves requests; crossenc installs it in every process.
    """
    compat.install_scoring_io_processor("cross-encoder", TemplatedCrossEncoderIOProcessor)
