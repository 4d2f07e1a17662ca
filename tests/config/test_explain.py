"""`crossenc explain`: what it prints, that it loads no weights or model code, and that its
endpoint table is the routes vLLM registers."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from crossenc import compat
from crossenc.config import explain
from crossenc.config.resolve import endpoints
from crossenc.model_executor.models.registry import ADAPTERS_MODULE
from tests.config.families import BAD_TOKENS


# --- crossenc explain ---------------------------------------------------------------------


def test_explain_prints_endpoints(config_dirs, capsys):
    overrides = json.dumps({"architectures": ["Qwen3ForSequenceClassification"], "num_labels": 1})
    assert explain.main([config_dirs["qwen3"], "--hf-overrides", overrides]) == 0
    out = capsys.readouterr().out
    assert f"{ADAPTERS_MODULE}:Qwen3ForSequenceClassification" in out
    assert "runner         pooling" in out and "convert        none" in out
    assert "yes  /score, /rerank, /v1/rerank" in out
    assert "no   /v1/embeddings" in out

    convert = json.dumps({"architectures": ["Qwen3ForSequenceClassification"],
                          "classifier_from_token": BAD_TOKENS, "method": "from_2_way_softmax"})
    assert explain.main([config_dirs["qwen3"], "--hf-overrides", convert]) == 1
    assert "classifier token 'no'" in capsys.readouterr().err

    causal = json.dumps({"architectures": ["Qwen3ForCausalLM"]})
    assert explain.main([config_dirs["qwen3"], "--hf-overrides", causal]) == 0
    out = capsys.readouterr().out
    assert "runner         generate" in out and "no   /pooling" in out
    assert 'To serve it as a reranker: --hf-overrides \'{"architectures": ["Qwen3ForSequenceClassification"]' in out

    assert explain.main([config_dirs["llama"], "--hf-overrides", "{not json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def _explain_cli(model_dir: str, hf_overrides: str) -> str:
    """`crossenc explain` in a fresh interpreter; its standard output."""
    return subprocess.run(
        [sys.executable, "-m", "crossenc.cli", "explain", model_dir, "--hf-overrides", hf_overrides],
        capture_output=True, text=True, check=True).stdout


def test_explain_cli_loads_no_weights_or_model_code(config_dirs):
    # The directory has no weights at all; the command still explains it.
    out = _explain_cli(config_dirs["deberta"], '{"architectures": ["DebertaV2Model"]}')
    assert "score          embed-cosine" in out
    assert "yes  /v1/embeddings" in out
    # DeBERTa v1 (model_type "deberta"): an NLI classifier classifies, it does not score pairs.
    out = _explain_cli(config_dirs["deberta-v1"], '{"num_labels": 3}')
    assert "crossenc.model_executor.models.deberta:DebertaForSequenceClassification" in out
    assert "num_labels=3: a multi-label classifier classifies" in out


@pytest.mark.parametrize("tasks,num_labels", [
    (("embed", "token_embed"), None), (("token_embed",), None), (("embed",), None),
    (("classify", "token_classify"), 1), (("classify", "token_classify"), 3), (("token_classify",), None),
])
def test_endpoints_agree_with_the_routes_vllm_registers(tasks, num_labels):
    """explain's endpoint table against vLLM's own router registration on the installed release
    (0.33 serves /v1/embeddings for a token_embed model, earlier releases do not)."""
    factories = pytest.importorskip("vllm.entrypoints.pooling.factories")
    from fastapi import FastAPI

    from crossenc.config.resolve import score_route

    def main_task(supported):
        return compat.main_pooling_task(tuple(supported), [])

    task = main_task(tasks)
    app = FastAPI()
    factories.register_pooling_api_routers(
        app, tasks, SimpleNamespace(get_pooling_task=main_task, hf_config=SimpleNamespace(num_labels=num_labels)))
    routes = {r.path: r.endpoint.__module__ for r in app.routes if hasattr(r, "endpoint")}
    route, reason = score_route(task, num_labels)
    works = {e: ok for e, ok, _ in endpoints(SimpleNamespace(
        pooling_task=task, score_route=route, score_reason=reason, num_labels=num_labels))}
    # vLLM builds the embeddings handler for the main task only: the route's module names it.
    served = routes.get("/v1/embeddings", "").endswith(f".{task}.api_router")
    assert works["/v1/embeddings"] == served, routes
    assert works["/score, /rerank, /v1/rerank"] == all(p in routes for p in ("/score", "/rerank", "/v1/rerank"))
    assert works["/pooling"] == ("/pooling" in routes)
