"""Several pairs per engine request (crossenc.model_executor.layers.pair_packing).

The packing rules against a plain reading of them, and real engines: `LLM.score` with packing
against the same pairs one request each and against sentence-transformers' CrossEncoder, for
relative-position (v3), convolution (v2) and absolute-position DeBERTa; a packed request's
outputs carry each pair's own token ids; a server's /rerank and /score with packing equal to the
pairs sent one by one.
"""

from __future__ import annotations

import json
import os
import signal
import threading

import numpy as np
import pytest
import torch

from crossenc import compat
from crossenc.model_executor.layers import pair_packing
from tests.conftest import VllmRunner, release
from tests.utils import DOCUMENTS, QUERY, save_deberta

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ATOL = 1e-4  # against sentence-transformers
EXACT = 1e-6  # packed against one pair per request, same engine
# Pairs of many lengths, unicode and an empty document.
PAIRS_DOCS = [("document %d " % i) * (1 + i % 9) for i in range(37)] + ["", "ünïcödé ✓ ≠ " * 4, *DOCUMENTS]
MAX_MODEL_LEN = 96


@given(st.lists(st.integers(1, 120), max_size=60), st.integers(1, 128), st.integers(1, 20))
def test_pack_groups_are_consecutive_and_within_the_budget(lengths, budget, max_pairs):
    groups = pair_packing.pack_groups(lengths, budget, max_pairs)
    assert [i for g in groups for i in g] == list(range(len(lengths)))
    for g in groups:
        assert 1 <= len(g) <= max_pairs
        assert len(g) == 1 or sum(lengths[i] for i in g) <= budget
    # Greedy: the next pair would not have fitted in the group before it.
    for a, b in zip(groups, groups[1:]):
        assert len(a) == max_pairs or sum(lengths[i] for i in a) + lengths[b[0]] > budget


@given(st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=5), min_size=1, max_size=8),
       st.data())
def test_segment_positions_restart_at_every_request_and_pair(requests, data):
    packed = {i for i in range(len(requests)) if data.draw(st.booleans())}
    seq_lens = [sum(r) for r in requests]
    pairs = {i: requests[i] for i in packed}
    expected = []
    for i, r in enumerate(requests):
        for n in (r if i in packed else [sum(r)]):
            expected.extend(range(n))
    assert pair_packing.segment_positions(pair_packing.segments(seq_lens, pairs)).tolist() == expected


def test_max_pairs_per_request_from_the_environment(monkeypatch):
    monkeypatch.delenv(pair_packing.MAX_PAIRS_ENV, raising=False)
    default = pair_packing.MAX_PAIRS_PER_REQUEST
    assert [len(g) for g in pair_packing.pack_groups([1] * (default + 5), 10**6)] == [default, 5]
    monkeypatch.setenv(pair_packing.MAX_PAIRS_ENV, "30")
    assert [len(g) for g in pair_packing.pack_groups([1] * 40, 100)] == [30, 10]
    for bad in ("0", "-2", "many", "1.5"):
        monkeypatch.setenv(pair_packing.MAX_PAIRS_ENV, bad)
        with pytest.raises(ValueError, match=f"CROSSENC_PACK_MAX_PAIRS={bad!r}: the most pairs per engine"):
            pair_packing.pack_groups([1] * 4, 100)


def test_pack_groups_keep_an_oversized_pair_alone():
    assert [list(g) for g in pair_packing.pack_groups([3, 200, 4, 5], 10)] == [[0], [1], [2, 3]]
    # A pair over the model's limit stays alone even where the request budget has room for it.
    assert pair_packing.pack_runs([3, 20, 4, None, 5, 6], [0] * 6, 100, pair_limit=10) == [[0], [1], [2], [3], [4, 5]]


def test_a_packed_request_may_exceed_max_model_len_only_pair_by_pair():
    from types import SimpleNamespace

    assert pair_packing.request_tokens(512, 65536) == pair_packing.REQUEST_TOKENS
    assert pair_packing.request_tokens(512, 2048) == 2048
    assert pair_packing.request_tokens(32768, 16384) == 32768  # never below max_model_len
    model_config = SimpleNamespace(max_model_len=100)
    assert pair_packing.request_budget(model_config) == 100  # nothing offered
    model_config.crossenc_packed_request_tokens = (1000, 0)
    assert pair_packing.request_budget(model_config) == 1000

    def params(lens):
        return SimpleNamespace(extra_kwargs=None if lens is None else {pair_packing.PAIRS_KEY: lens})

    fits = pair_packing.packed_prompt_fits
    assert fits(model_config, params([100, 100, 50]), 250)
    assert not fits(model_config, params([100, 101]), 201)  # a pair over max_model_len
    assert not fits(model_config, params([100, 100]), 150)  # pairs that are not the prompt
    assert not fits(model_config, params([100] * 11), 1100)  # over the budget
    assert not fits(model_config, params([0, 150]), 150)
    assert not fits(model_config, params(None), 150)  # not a packed request
    model_config.crossenc_packed_request_tokens = None  # an engine in the front end's process declined
    assert not fits(model_config, params([100, 50]), 150)


# --- Real engines -------------------------------------------------------------------------------

vllm_needed = pytest.mark.engine


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    return {variant: save_deberta(root / variant, "seq_cls", variant, num_labels=1)
            for variant in ("v3", "v2-conv", "absolute")}


def _scores(llm, queries, documents, packed: bool, events: list | None = None):
    """Scores, each pair's token ids and the engine requests of `llm.score`; `events` (if given)
    gets ("tokenize", pairs, thread name) and ("add", None, None) in the order the call tokenized
    and added, and every chunk after the first is tokenized only once the first request went to
    the engine (or after 60 s): a call that tokenizes all its pairs before it adds a request
    records ("waited", None, None) first."""
    processor = llm.pooling_io_processors["cross-encoder"]
    processor.packs_pairs = packed
    gated = events is not None
    events = [] if events is None else events
    engine, pretokenize = llm.llm_engine, processor._pretokenize
    add_request = engine.add_request
    first_add = threading.Event()

    def add(*args, **kwargs):
        events.append(("add", None, None))
        first_add.set()
        return add_request(*args, **kwargs)

    def tokenize(requests):
        if gated and any(e[0] == "tokenize" for e in events) and not first_add.wait(timeout=60):
            events.append(("waited", None, None))
        events.append(("tokenize", len(requests), threading.current_thread().name))
        return pretokenize(requests)

    engine.add_request, processor._pretokenize = add, tokenize
    try:
        outputs = llm.score(queries, documents)
    finally:
        del engine.add_request, processor._pretokenize  # the class's own again
        processor.packs_pairs = True
    return ([o.outputs.score for o in outputs], [list(o.prompt_token_ids) for o in outputs],
            events.count(("add", None, None)))


@vllm_needed
@pytest.mark.parametrize("variant", ["v3", "v2-conv", "absolute"])
def test_packed_scores_equal_one_pair_per_request_and_cross_encoder(checkpoints, variant):
    pytest.importorskip("vllm")
    from sentence_transformers import CrossEncoder

    path = checkpoints[variant]
    memory = {"gpu_memory_utilization": 0.3} if torch.cuda.is_available() else {}
    llm = VllmRunner(path, runner="pooling", max_model_len=MAX_MODEL_LEN, **memory).llm
    try:
        packed, packed_ids, sizes = _scores(llm, QUERY, PAIRS_DOCS, packed=True)
        alone, alone_ids, _ = _scores(llm, QUERY, PAIRS_DOCS, packed=False)
        # Pairs of different queries, packed together.
        queries = [QUERY, "another question", ""] * 3
        mixed, _, _ = _scores(llm, queries, PAIRS_DOCS[:9], packed=True)
        mixed_alone, _, _ = _scores(llm, queries, PAIRS_DOCS[:9], packed=False)
    finally:
        release(llm)
    assert sizes < len(PAIRS_DOCS) / 2  # packing happened
    assert packed_ids == alone_ids
    assert np.max(np.abs(np.subtract(packed, alone))) <= EXACT
    assert np.max(np.abs(np.subtract(mixed, mixed_alone))) <= EXACT
    # (CrossEncoder batches an empty document as "" text, vLLM tokenizes it as the query alone:
    # compared above, packed against alone.)
    cross_encoder = CrossEncoder(str(path), device="cpu", max_length=MAX_MODEL_LEN)
    texts = [(i, d) for i, d in enumerate(PAIRS_DOCS) if d]
    expected = cross_encoder.predict([(QUERY, d) for _, d in texts])
    assert np.max(np.abs(np.subtract([packed[i] for i, _ in texts], expected))) <= ATOL
    assert np.ptp(packed) > 3 * ATOL  # the pairs get different scores: the comparisons are not vacuous


@vllm_needed
def test_an_engine_in_its_own_process_takes_packed_requests_longer_than_max_model_len(checkpoints, monkeypatch):
    """`LLM` with its engine in a process of its own (vLLM's default): a call's pairs fill
    requests of up to `request_budget` tokens, more than max_model_len; scores and token ids are
    each pair's alone, a pair over max_model_len is refused by its own length, and the front end
    keeps the model's max_model_len. A call of several requests' pairs goes to the engine request
    by request while the rest is tokenized (`offline.run_streamed`), with the same scores, and a
    pair refused late in such a call aborts the requests already added."""
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    memory = {"gpu_memory_utilization": 0.3 if torch.cuda.is_available() else 0.1}
    llm = VllmRunner(checkpoints["v3"], runner="pooling", max_model_len=MAX_MODEL_LEN, **memory).llm
    try:
        model_config = llm.llm_engine.model_config
        budget = pair_packing.request_budget(model_config)
        packed, packed_ids, sizes = _scores(llm, QUERY, PAIRS_DOCS, packed=True)
        alone, alone_ids, _ = _scores(llm, QUERY, PAIRS_DOCS, packed=False)
        with pytest.raises(Exception, match=f"maximum (context|model) length (is|of) {MAX_MODEL_LEN}"):
            llm.score(QUERY, [PAIRS_DOCS[0], "word " * (2 * MAX_MODEL_LEN), PAIRS_DOCS[1]])
        # Pairs of up to ~60 tokens, several requests' worth.
        many = [("document %d " % i) * 12 for i in range(4 * budget // 40)]
        events: list = []
        streamed, streamed_ids, requests = _scores(llm, QUERY, many, packed=True, events=events)
        one_each, one_each_ids, _ = _scores(llm, QUERY, many, packed=False)
        with pytest.raises(Exception, match=f"maximum (context|model) length (is|of) {MAX_MODEL_LEN}"):
            llm.score(QUERY, many[:-1] + ["word " * (2 * MAX_MODEL_LEN)])
        again, _, _ = _scores(llm, QUERY, PAIRS_DOCS, packed=True)  # and it keeps serving
    finally:
        release(llm)
    assert 4 <= requests < len(many) / 10
    from crossenc.entrypoints.pooling import score_template

    # The call's pairs were tokenized a chunk at a time, in order, on the processor's tokenizer
    # thread, and the first chunk's pairs went to the engine without waiting for the next chunk.
    chunk = score_template.STREAM_CHUNK_PAIRS
    assert ("waited", None, None) not in events
    assert [e[1] for e in events if e[0] == "tokenize"] == [min(chunk, len(many) - k) for k in range(0, len(many), chunk)]
    assert {e[2] for e in events if e[0] == "tokenize"} == {"crossenc-tokenize_0"}
    tokenized = [i for i, e in enumerate(events) if e[0] == "tokenize"]
    assert tokenized[0] < events.index(("add", None, None)) < tokenized[1]
    assert streamed_ids == one_each_ids
    assert np.max(np.abs(np.subtract(streamed, one_each))) <= EXACT
    assert model_config.max_model_len == MAX_MODEL_LEN
    assert budget > sum(len(ids) for ids in packed_ids) > 4 * MAX_MODEL_LEN
    assert sizes == 2  # the first chunk's pairs (sent at once), then every other pair of the call
    assert packed_ids == alone_ids
    assert np.max(np.abs(np.subtract(packed, alone))) <= EXACT
    # The engine may run the call's two requests in one step or in two (shapes of other sizes).
    assert np.max(np.abs(np.subtract(packed, again))) <= EXACT
    assert np.ptp(packed) > 3 * ATOL


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_an_offline_calls_pairs_are_tokenized_on_a_thread_also_in_a_forked_process(tmp_path):
    """What `LLM.score` hands its engine (`_streamed_packs`, the chunks tokenized on the processor's
    thread), without an engine: each pair's ids the tokenizer's own, and the same packs in a
    process forked after a call (a fork copies the thread's executor, not the thread)."""
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from crossenc.entrypoints.pooling import score_template
    from tests.utils import score_render_params, scoring_processor

    path = save_deberta(tmp_path / "m", "seq_cls", "v3", num_labels=1)
    processor = scoring_processor(path, max_model_len=MAX_MODEL_LEN)
    docs = [f"document {i} " * (1 + i % 7) for i in range(3 * score_template.STREAM_CHUNK_PAIRS + 5)]

    def packs():
        processor._offline_packs = []
        requests = [score_render_params(processor, QUERY, d) for d in docs]
        return [[list(m[score_template._TOKENS_KEY][0]) for m in p.get(score_template._PACK_KEY) or [p]]
                for p in processor._streamed_packs(requests)]

    parent = packs()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its answer down the pipe, or nothing if it hangs (killed after 60 s)
        try:
            os.close(read)
            signal.alarm(60)
            os.write(write, json.dumps(packs()).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        child = answer.read()
    os.waitpid(pid, 0)
    assert child and json.loads(child) == parent
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert [ids for pack in parent for ids in pack] == [tokenizer(QUERY, d)["input_ids"] for d in docs]
    assert len(parent) == len(docs)  # without an engine that takes longer requests, a pair each


def test_pairs_vllm_renders_itself_wait_for_the_tokenizer_thread(tmp_path, monkeypatch):
    """The tokenizer is one Rust object that two threads must not use at once ("Already
    borrowed"): while `_streamed_packs`' thread tokenizes a chunk, the caller's rendering of a
    pair through vLLM's own per-pair path (which tokenizes it) waits, and the ids are the
    tokenizer's own either way."""
    pytest.importorskip("vllm")
    import time

    from transformers import AutoTokenizer

    from crossenc.entrypoints.pooling import score_template
    from tests.utils import score_render_params, scoring_processor

    path = save_deberta(tmp_path / "m", "seq_cls", "v3", num_labels=1)
    processor = scoring_processor(path, max_model_len=MAX_MODEL_LEN)
    chunk = score_template.STREAM_CHUNK_PAIRS
    docs = [f"document {i} " * (1 + i % 7) for i in range(3 * chunk)]
    own_path = set(docs[:chunk:3])  # pairs of the first chunk left to vLLM's per-pair path
    spans: dict[str, list] = {"tokenize": [], "vllm": []}
    batch_key, pretokenize, get_score_prompt = processor._batch_key, processor._pretokenize, processor.get_score_prompt

    def timed(kind, call, *args, **kwargs):
        start = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spans[kind].append((start, time.perf_counter()))

    def slow_pretokenize(requests):  # a chunk that takes a while, so that a render would overlap it
        return timed("tokenize", lambda: (time.sleep(0.05), pretokenize(requests)))

    monkeypatch.setattr(processor, "_batch_key", lambda rp: None if rp["data_2"] in own_path else batch_key(rp))
    monkeypatch.setattr(processor, "_pretokenize", slow_pretokenize)
    monkeypatch.setattr(processor, "get_score_prompt",
                        lambda *a, **k: timed("vllm", get_score_prompt, *a, **k)
                        if k.get("data_2", a[1:2] and a[1]) in own_path else get_score_prompt(*a, **k))
    processor._offline_packs = []
    requests = [score_render_params(processor, QUERY, d) for d in docs]
    rendered = [processor.render(pack) for pack in processor._streamed_packs(requests)]
    ids = [list(r["prompts"]["prompt_token_ids"]) for r in rendered]

    tokenizer = AutoTokenizer.from_pretrained(path)
    assert ids == [tokenizer(QUERY, d)["input_ids"] for d in docs]
    assert len(spans["tokenize"]) == 3 and len(spans["vllm"]) == len(own_path)
    for start, end in spans["vllm"]:
        assert all(end <= t0 or start >= t1 for t0, t1 in spans["tokenize"])


def test_an_online_requests_pairs_are_packed_and_the_outputs_split_back(tmp_path, monkeypatch):
    """What the server does with a request's rendered pairs, on the processor vLLM builds."""
    pytest.importorskip("vllm")
    from vllm.outputs import PoolingOutput, PoolingRequestOutput

    from tests.utils import scoring_processor

    if not compat.has_v1_model_runner():
        pytest.skip(f"vLLM {compat.installed_vllm_version()} has no V1 model runner: no packed requests "
                    "(test_the_front_end_packs_pairs_only_for_an_engine_that_splits_them)")
    monkeypatch.setenv(compat.V2_MODEL_RUNNER_ENV, "0")  # as crossenc's engine defaults set it
    processor = scoring_processor(save_deberta(tmp_path / "m", "seq_cls", "v3", num_labels=1),
                                  max_model_len=MAX_MODEL_LEN)
    assert pair_packing.engine_splits_pairs(processor.vllm_config)
    inputs, ctx = _rendered_request(processor)
    processor.pack_engine_inputs(ctx)
    packed = ctx.engine_inputs
    assert len(packed) < len(inputs) / 2
    ids = [i["prompts"]["prompt_token_ids"] for i in inputs]
    assert [t for e in packed for t in e["prompts"]["prompt_token_ids"]] == [t for i in ids for t in i]
    for engine_input, lens in zip(packed, ctx.crossenc_pair_lens):
        n = len(engine_input["prompts"]["prompt_token_ids"])
        assert n <= MAX_MODEL_LEN
        assert pair_packing.pair_lens(engine_input["params"]) == lens and (lens is None or sum(lens) == n)
    assert ctx.pooling_params.extra_kwargs is None  # the request's parameters are not touched
    # Each packed output (its pairs' outputs stacked) becomes one output per pair, in order.
    ctx.final_res_batch = [
        PoolingRequestOutput(request_id=str(k), outputs=PoolingOutput(data=torch.rand(len(lens or [0]), 1).squeeze(0)
                                                                      if lens is None else torch.rand(len(lens), 1)),
                             prompt_token_ids=e["prompts"]["prompt_token_ids"], num_cached_tokens=0, finished=True)
        for k, (e, lens) in enumerate(zip(packed, ctx.crossenc_pair_lens))]
    rows = [row for out in ctx.final_res_batch for row in (out.outputs.data if out.outputs.data.ndim == 2
                                                            else [out.outputs.data])]
    processor.post_process_online(ctx)
    assert [list(o.prompt_token_ids) for o in ctx.final_res_batch] == ids
    assert all(torch.equal(o.outputs.data, r) and o.outputs.data.shape == (1,) for o, r in zip(ctx.final_res_batch, rows))


def _rendered_request(processor):
    """A /score or /rerank request's pairs as vLLM's pooling server hands them to the processor:
    (the engine inputs, the server's context)."""
    from types import SimpleNamespace

    from tests.utils import score_render_params

    render_params = [score_render_params(processor, QUERY, d) for d in PAIRS_DOCS]
    for rp in render_params:
        rp["params"] = render_params[0]["params"]  # one request's
    processor._pretokenize(render_params)  # as for a request's pairs (`_RequestRendering`)
    inputs = [processor.render(rp) for rp in render_params]
    return inputs, SimpleNamespace(engine_inputs=list(inputs), pooling_params=render_params[0]["params"],
                                   final_res_batch=[])


def test_the_front_end_packs_pairs_only_for_an_engine_that_splits_them(tmp_path, monkeypatch):
    """vLLM's V2 model runner (chosen with VLLM_USE_V2_MODEL_RUNNER=1 on a platform with Triton,
    the only one from vLLM 0.34 on): crossenc's model state there has not yet run in an engine, so
    the front end sends one engine request per pair, exactly the inputs it rendered, unless
    CROSSENC_PACK_PAIRS_V2=1 on a GPU (where that state applies)."""
    pytest.importorskip("vllm")
    import vllm.config.vllm as vllm_config_module

    from tests.utils import scoring_processor

    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True, raising=False)  # as on a GPU
    monkeypatch.setenv(compat.V2_MODEL_RUNNER_ENV, "1")
    processor = scoring_processor(save_deberta(tmp_path / "m", "seq_cls", "v3", num_labels=1),
                                  max_model_len=MAX_MODEL_LEN)
    assert getattr(processor.vllm_config, "use_v2_model_runner", True)
    assert not pair_packing.engine_splits_pairs(processor.vllm_config) and not processor.packs_pairs
    inputs, ctx = _rendered_request(processor)
    processor.pack_engine_inputs(ctx)
    assert ctx.engine_inputs == inputs
    assert all(pair_packing.pair_lens(i["params"]) is None for i in inputs)
    monkeypatch.setenv(pair_packing.V2_PACK_ENV, "1")
    assert not pair_packing.engine_splits_pairs(processor.vllm_config)  # the CPU: no model state of crossenc's
    monkeypatch.setattr(compat, "device_type", lambda: "cuda")
    assert pair_packing.engine_splits_pairs(processor.vllm_config)
    monkeypatch.setenv(pair_packing.V2_PACK_ENV, "0")
    assert not pair_packing.engine_splits_pairs(processor.vllm_config)


def test_vllms_v2_model_runner_gets_pair_positions_and_token_types_from_crossencs_model_state(tmp_path,
                                                                                             monkeypatch):
    """vLLM's V2 model runner on a GPU asks the model for its state (`get_model_state_cls`):
    crossenc's, built on vLLM's own classes (the encoder-only one, which passes token types, from
    0.32 on), adds each packed pair's positions to the model's inputs as the V1 hook does, and
    keeps vLLM's token types. Here on vLLM's real classes with the state's device on the CPU (no
    engine: vLLM's V2 runner needs a GPU); the model sees `step_inputs`, which the engine tests
    check against one request per pair."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    from vllm.engine.arg_utils import EngineArgs

    from tests.utils import score_render_params, scoring_processor

    cls = compat.encoder_model_state_cls(pair_packing.pair_lens, pair_packing.step_inputs, "cuda")
    if cls is None:
        pytest.skip(f"vLLM {compat.installed_vllm_version()} has no V2 model runner")
    assert compat.encoder_model_state_cls(pair_packing.pair_lens, pair_packing.step_inputs, "cpu") is None
    assert not hasattr(_model_on_this_machine(), "get_model_state_cls")  # vLLM chooses here

    path = save_deberta(tmp_path / "types", "seq_cls", "token-types", num_labels=1)
    vllm_config = EngineArgs(model=str(path), runner="pooling", max_model_len=MAX_MODEL_LEN).create_engine_config()
    state = cls(vllm_config, torch.nn.Module(), None, torch.device("cpu"))
    processor = scoring_processor(path, max_model_len=MAX_MODEL_LEN)
    alone = processor.render(score_render_params(processor, QUERY, DOCUMENTS[0]))  # token types, one pair
    ids = alone["prompts"]["prompt_token_ids"]
    packed_params = alone["params"].clone()
    packed_params.extra_kwargs = {pair_packing.PAIRS_KEY: [3, 5, 2]}

    def new_request(req_id, n, params):
        return SimpleNamespace(req_id=req_id, prompt_token_ids=list(range(n)), prefill_token_ids=list(range(n)),
                               pooling_params=params, mm_features=[], sampling_params=None, lora_request=None)

    state.add_request(0, new_request("alone", len(ids), alone["params"]))
    state.add_request(1, new_request("packed", 10, packed_params))
    counts = np.array([len(ids), 10], dtype=np.int32)
    batch = SimpleNamespace(req_ids=["alone", "packed"], num_reqs=2, num_scheduled_tokens=counts,
                            num_tokens=int(counts.sum()), num_tokens_after_padding=int(counts.sum()) + 4,
                            num_computed_tokens_np=np.zeros(2, dtype=np.int32),
                            idx_mapping_np=np.array([0, 1], dtype=np.int32))
    inputs = state.prepare_inputs(batch, None)
    expected = pair_packing.step_inputs([len(ids), 10], {1: [3, 5, 2]}, "cpu")
    assert inputs["pair_positions"].tolist() == expected["pair_positions"].tolist() == (
        list(range(len(ids))) + [0, 1, 2, 0, 1, 2, 3, 4, 0, 1])
    assert inputs["num_pair_seqs"] == expected["num_pair_seqs"] == 4
    if any(c.__name__ == "EncoderOnlyModelState" for c in cls.__mro__):  # vLLM 0.32 and later
        types = inputs["token_type_ids"][:len(ids)].tolist()
        assert types == _transformers_token_types(path, QUERY, DOCUMENTS[0]) and 1 in types
    state.remove_request("packed")
    assert "pair_positions" not in state.prepare_inputs(
        SimpleNamespace(**{**vars(batch), "req_ids": ["alone"], "num_reqs": 1}), None)
    monkeypatch.setattr(compat, "device_type", lambda: "cuda")  # what a model on a GPU gives vLLM
    assert _model_on_this_machine().get_model_state_cls() is cls


def _model_on_this_machine():
    from crossenc.model_executor.models.deberta_v2 import DebertaV2ForSequenceClassification
    from tests.utils import deberta_config

    return DebertaV2ForSequenceClassification(config=deberta_config("v3", num_labels=1))


def _transformers_token_types(path, query, document):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))(query, document)["token_type_ids"]
