"""Engine defaults for crossenc's encoders (tokens per engine step on a GPU, every core for the
model's threads on the CPU build): the rules themselves (hypothesis), and vLLM's own engine
configuration built from its EngineArgs with crossenc loaded, for crossenc's DeBERTa and vLLM's BERT,
with and without a user's choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossenc import compat
from crossenc.config import scheduler
from crossenc.config.scheduler import (ENCODER_MAX_NUM_BATCHED_TOKENS, cpu_reserved_cores,
                                       encoder_max_num_batched_tokens)
from crossenc.model_executor.models.registry import CROSSENC_ARCHS

ARCHS = st.sampled_from([*CROSSENC_ARCHS, "BertForSequenceClassification", "Qwen3ForSequenceClassification", None])


@given(arch=ARCHS, runner=st.sampled_from(["pooling", "generate"]), device=st.sampled_from(["cuda", "cpu", "xpu"]),
       vllm_default=st.integers(1, 1 << 18), max_num_seqs=st.integers(1, 2048),
       max_model_len=st.integers(1, 1 << 15))
def test_encoder_default_only_raises_the_step_for_crossencs_encoders_on_a_gpu(
        arch, runner, device, vllm_default, max_num_seqs, max_model_len):
    got = encoder_max_num_batched_tokens(arch, runner, device, vllm_default, max_num_seqs, max_model_len)
    if arch in CROSSENC_ARCHS and runner == "pooling" and device == "cuda":
        assert got == max(vllm_default, min(ENCODER_MAX_NUM_BATCHED_TOKENS, max_num_seqs * max_model_len))
        assert got >= vllm_default
    else:
        assert got == vllm_default


@given(arch=ARCHS, runner=st.sampled_from(["pooling", "generate"]), device=st.sampled_from(["cuda", "cpu", "xpu"]),
       world_size=st.integers(1, 4), reserve=st.sampled_from([None, "0", "1", "3"]),
       bind=st.sampled_from([None, "auto", "nobind", "0-1", "0-3|4-7"]))
def test_cpu_default_gives_crossencs_encoders_every_core_unless_the_user_chose(
        arch, runner, device, world_size, reserve, bind):
    environ = {k: v for k, v in ((compat.CPU_RESERVED_CORES_ENV, reserve), (compat.CPU_THREADS_BIND_ENV, bind))
               if v is not None}
    got = cpu_reserved_cores(arch, runner, device, world_size, environ)
    chose = reserve is not None or bind not in (None, "auto")
    if arch in CROSSENC_ARCHS and runner == "pooling" and device == "cpu" and world_size == 1 and not chose:
        assert got == "0"
    else:
        assert got is None


pytest.importorskip("vllm")


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    """The CPU reserve crossenc sets while a test builds engine configs ends with the test."""
    monkeypatch.delenv(compat.CPU_RESERVED_CORES_ENV, raising=False)
    monkeypatch.delenv(compat.CPU_THREADS_BIND_ENV, raising=False)
    monkeypatch.setattr(scheduler, "_own_reserve", None)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from tests.utils import save_deberta, save_tokenizer

    deberta = tmp_path_factory.mktemp("deberta")
    save_deberta(deberta, "seq_cls", "v3", num_labels=1)
    bert = tmp_path_factory.mktemp("bert")
    vocab = save_tokenizer(bert)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        num_labels=1)).save_pretrained(bert)
    return {"deberta": str(deberta), "bert": str(bert)}


def _scheduler(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    config = EngineArgs(model=model, runner="pooling", max_model_len=512, **kwargs).create_engine_config()
    return config.scheduler_config


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_vllm_engine_config_gets_the_encoder_default(checkpoints, monkeypatch, device):
    from crossenc import compat

    vllm_default = _scheduler(checkpoints["bert"]).max_num_batched_tokens
    monkeypatch.setattr(compat, "device_type", lambda: device)
    deberta = _scheduler(checkpoints["deberta"])
    if device == "cuda":
        assert deberta.max_num_batched_tokens == min(ENCODER_MAX_NUM_BATCHED_TOKENS, deberta.max_num_seqs * 512)
        assert deberta.max_num_batched_tokens > vllm_default
    else:
        assert deberta.max_num_batched_tokens == vllm_default
    # vLLM's own models keep vLLM's defaults; a user's value is kept.
    assert _scheduler(checkpoints["bert"]).max_num_batched_tokens == vllm_default
    assert _scheduler(checkpoints["deberta"], max_num_batched_tokens=3072).max_num_batched_tokens == 3072
    # Bounded by max_num_seqs * max_model_len, as vLLM bounds its own.
    vllm_8 = _scheduler(checkpoints["bert"], max_num_seqs=8).max_num_batched_tokens
    assert _scheduler(checkpoints["deberta"], max_num_seqs=8).max_num_batched_tokens == (
        max(vllm_8, 8 * 512) if device == "cuda" else vllm_8)


def test_vllm_engine_config_on_the_cpu_gives_crossencs_encoders_every_core(checkpoints, monkeypatch):
    """The reserve reaches the processes vLLM starts after the config (through the environment);
    vLLM's own models, a user's reserve or binding, and more than one worker keep vLLM's."""
    import os

    key = compat.CPU_RESERVED_CORES_ENV
    monkeypatch.setattr(compat, "device_type", lambda: "cpu")

    _scheduler(checkpoints["deberta"])
    assert os.environ[key] == "0"
    _scheduler(checkpoints["bert"])  # crossenc's own setting does not outlive its engine
    assert key not in os.environ
    _scheduler(checkpoints["deberta"], max_num_batched_tokens=3072)  # independent of the step default
    assert os.environ[key] == "0"
    monkeypatch.setenv(key, "1")  # the user's
    _scheduler(checkpoints["deberta"])
    assert os.environ[key] == "1"
    _scheduler(checkpoints["bert"])
    assert os.environ[key] == "1"
    monkeypatch.delenv(key)
    monkeypatch.setenv(compat.CPU_THREADS_BIND_ENV, "0")
    _scheduler(checkpoints["deberta"])
    assert key not in os.environ


_SAY = r"""
import sys
from crossenc import compat
compat.device_type = lambda: "cpu"
from vllm.engine.arg_utils import EngineArgs
from vllm.plugins import load_general_plugins
load_general_plugins()
EngineArgs(model=sys.argv[1], runner="pooling", max_model_len=512).create_engine_config()
"""


@pytest.mark.parametrize("configure", ["1", "0"])
def test_the_default_crossenc_chooses_is_said_in_vllms_log(checkpoints, configure):
    """crossenc's log lines reach stderr beside vLLM's (vLLM's logging settings apply)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "VLLM_CONFIGURE_LOGGING": configure, "VLLM_PLUGINS": "crossenc"}
    env.pop(compat.CPU_RESERVED_CORES_ENV, None)
    out = subprocess.run([sys.executable, "-c", _SAY, checkpoints["deberta"]], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    said = "crossenc: the model's threads get every core" in out.stderr
    assert said == (configure == "1"), out.stderr[-2000:]
    # The dtype it runs in: this float32 checkpoint at dtype "auto".
    assert ("crossenc: DebertaV2ForSequenceClassification runs in float16 on the CPU (dtype 'auto'"
            in out.stderr) == (configure == "1"), out.stderr[-2000:]
