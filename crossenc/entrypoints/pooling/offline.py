"""`LLM.score`'s engine loop for crossenc's cross-encoders: each engine request goes to the
engine as soon as it is made.

vLLM's offline loop (`_run_tiling_engine`) renders every request of a call before it adds the
first one to the engine, so the engine waits for the whole call's tokenization (on an H200 host
~25 ms of a 256-pair call that takes ~65 ms, docs/benchmarks.md). crossenc's scoring processor
makes a call's packed requests as the loop asks for them (`StreamedRequests`: pairs tokenized a
chunk at a time), and this loop adds each one at once. With the engine in a process of its own
(vLLM's default) the engine runs the first requests while the front end tokenizes the rest; an
engine in the caller's process runs when the loop steps it, after the last request is added, as
before. The outputs, their order and the errors are vLLM's loop's: a request that fails to
render or add aborts the ones already added and raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


class StreamedRequests:
    """A request factory whose requests are made while the engine runs the earlier ones.
    `make()` yields render params; `pairs(render_params)` says how many scored pairs a
    request carries (the progress bar counts pairs)."""

    def __init__(self, make: Callable[[], Iterator[dict]], pairs: Callable[[dict], int]):
        self.make = make
        self.pairs = pairs

    def __call__(self) -> Iterator[dict]:
        return self.make()


def run_streamed(llm: Any, io_processor: Any, factory: StreamedRequests, num_pairs: int,
                 use_tqdm: bool | Callable[..., Any] = True) -> list:
    """vLLM's `_run_tiling_engine` for a `StreamedRequests` factory of `num_pairs` pairs."""
    engine = llm.llm_engine
    max_in_core = engine.vllm_config.scheduler_config.max_num_seqs * 2
    pbar = None
    if use_tqdm:
        from tqdm.auto import tqdm

        pbar = (use_tqdm if callable(use_tqdm) else tqdm)(
            total=num_pairs, desc="Processed pairs", dynamic_ncols=True)
    outputs: list = []
    pairs_of: dict[str, int] = {}  # request id -> its pairs, while in the engine
    requests = iter(factory())
    made_all = False
    try:
        while not made_all or engine.has_unfinished_requests():
            while not made_all and len(pairs_of) < max_in_core:
                render_params = next(requests, None)
                if render_params is None:
                    made_all = True
                    break
                request = io_processor.render(render_params)
                [request_id] = llm._render_and_add_requests(
                    prompts=[request["prompts"]], params=[request["params"]],
                    lora_requests=[request["lora_requests"]], priorities=[request["priorities"]])
                pairs_of[request_id.split("-", 1)[0]] = factory.pairs(render_params)  # as vLLM's loop: its id
            for output in engine.step():
                assert output.finished
                outputs.append(output)
                done = pairs_of.pop(output.request_id, 1)
                if pbar is not None:
                    pbar.update(done)
    except Exception:
        if pairs_of:
            engine.abort_request(list(pairs_of))
        raise
    finally:
        if pbar is not None:
            pbar.close()
    return sorted(outputs, key=lambda x: int(x.request_id))
