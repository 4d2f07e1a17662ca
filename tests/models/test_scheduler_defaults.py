"""Engine defaults for crossenc's encoders (tokens per engine step on a GPU, every core for the
model's threads and a dtype the CPU computes in on the CPU build): the rules themselves
(hypothesis), and vLLM's own engine configuration built from its EngineArgs with crossenc loaded,
for crossenc's DeBERTa and vLLM's BERT, with and without a user's choice."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossenc import compat
from crossenc.config import scheduler
from crossenc.config.scheduler import (ENCODER_MAX_NUM_BATCHED_TOKENS, cpu_flags, cpu_reserved_cores,
                                       encoder_cudagraph_mode, encoder_dtype, encoder_max_num_batched_tokens)
from crossenc.model_executor.models.registry import CROSSENC_ARCH_NAMES

ARCHS = st.sampled_from([*sorted(CROSSENC_ARCH_NAMES), "BertForSequenceClassification", "Qwen3ForSequenceClassification", None])


@given(arch=ARCHS, runner=st.sampled_from(["pooling", "generate"]), device=st.sampled_from(["cuda", "cpu", "xpu"]),
       vllm_default=st.integers(1, 1 << 18), max_num_seqs=st.integers(1, 2048),
       max_model_len=st.integers(1, 1 << 15))
def test_encoder_default_only_raises_the_step_for_crossencs_encoders_on_a_gpu(
        arch, runner, device, vllm_default, max_num_seqs, max_model_len):
    got = encoder_max_num_batched_tokens(arch, runner, device, vllm_default, max_num_seqs, max_model_len)
    if arch in CROSSENC_ARCH_NAMES and runner == "pooling" and device == "cuda":
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
    if arch in CROSSENC_ARCH_NAMES and runner == "pooling" and device == "cpu" and world_size == 1 and not chose:
        assert got == "0"
    else:
        assert got is None


@given(arch=ARCHS, runner=st.sampled_from(["pooling", "generate"]), device=st.sampled_from(["cuda", "cpu", "xpu"]),
       user_mode=st.sampled_from([None, "NONE", "PIECEWISE", "FULL", "FULL_AND_PIECEWISE"]),
       enforce_eager=st.booleans(), torch_compile=st.booleans())
def test_gpu_default_runs_crossencs_uncompiled_encoders_without_cuda_graphs_unless_the_user_chose(
        arch, runner, device, user_mode, enforce_eager, torch_compile):
    got = encoder_cudagraph_mode(arch, runner, device, user_mode, enforce_eager, torch_compile)
    if (arch in CROSSENC_ARCH_NAMES and runner == "pooling" and device == "cuda" and user_mode is None
            and not enforce_eager and not torch_compile):
        assert got == "NONE"
    else:
        assert got is None


HALF = {"float16": {"avx512_fp16", "amx_fp16", "asimdhp"}, "bfloat16": {"avx512_bf16", "amx_bf16", "bf16"}}


@given(arch=ARCHS, runner=st.sampled_from(["pooling", "generate"]), device=st.sampled_from(["cuda", "cpu", "xpu"]),
       dtype_arg=st.sampled_from(["auto", "float16", "half", "bfloat16", "float32"]),
       resolved=st.sampled_from(["float16", "bfloat16", "float32"]),
       flags=st.none() | st.sets(st.sampled_from(["avx2", "avx512f", "f16c", "fma", "asimd",
                                                   *HALF["float16"], *HALF["bfloat16"]])))
def test_cpu_dtype_is_float32_only_where_auto_chose_a_half_precision_the_cpu_lacks(
        arch, runner, device, dtype_arg, resolved, flags):
    import torch

    vllm_dtype = getattr(torch, resolved)
    got = encoder_dtype(arch, runner, device, dtype_arg, vllm_dtype, None if flags is None else frozenset(flags))
    lacks = flags is not None and resolved in HALF and not flags & HALF[resolved]
    if arch in CROSSENC_ARCH_NAMES and runner == "pooling" and device == "cpu" and dtype_arg == "auto" and lacks:
        assert got == torch.float32
    else:
        assert got == vllm_dtype


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd fphp asimdhp bf16\n")
    assert cpu_flags(str(x86)) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cpu_flags(str(arm)) == {"fp", "asimd", "fphp", "asimdhp", "bf16"}
    assert cpu_flags(str(tmp_path / "absent")) is None
    (tmp_path / "none").write_text("processor\t: 0\n")
    assert cpu_flags(str(tmp_path / "none")) is None


pytest.importorskip("vllm")


@pytest.fixture(autouse=True)
def _own_environment(monkeypatch):
    """The environment crossenc sets while a test builds engine configs ends with the test."""
    monkeypatch.delenv(compat.CPU_RESERVED_CORES_ENV, raising=False)
    monkeypatch.delenv(compat.CPU_THREADS_BIND_ENV, raising=False)
    monkeypatch.delenv(compat.V2_MODEL_RUNNER_ENV, raising=False)
    monkeypatch.setattr(scheduler, "_own_env", {})


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


def _engine_config(model, **kwargs):
    from vllm.engine.arg_utils import EngineArgs

    return EngineArgs(model=model, runner="pooling", max_model_len=512, **kwargs).create_engine_config()


def _scheduler(model, **kwargs):
    return _engine_config(model, **kwargs).scheduler_config


@pytest.mark.parametrize("flags", ["amd-epyc", "avx512-fp16", "unreadable"])
def test_vllm_engine_config_on_the_cpu_runs_crossencs_encoders_in_a_dtype_the_cpu_computes(
        checkpoints, monkeypatch, flags):
    """dtype "auto" (vLLM: float16 for a float32 pooling checkpoint) becomes float32 on a CPU
    without float16 arithmetic; a CPU with it, unknown flags, a dtype the user passes and vLLM's
    own models keep vLLM's choice."""
    import torch

    monkeypatch.setattr(compat, "device_type", lambda: "cpu")
    monkeypatch.setattr(scheduler, "cpu_flags", {
        "amd-epyc": lambda: frozenset({"avx2", "avx512f", "f16c", "avx512_bf16"}),
        "avx512-fp16": lambda: frozenset({"avx2", "avx512f", "avx512_fp16", "amx_bf16"}),
        "unreadable": lambda: None}[flags])
    vllm_auto = _engine_config(checkpoints["bert"]).model_config.dtype
    assert vllm_auto == torch.float16  # vLLM's own rule for a float32 pooling checkpoint
    config = _engine_config(checkpoints["deberta"]).model_config
    assert config.dtype == (torch.float32 if flags == "amd-epyc" else torch.float16)
    assert config.head_dtype == torch.float32
    assert _engine_config(checkpoints["deberta"], dtype="float16").model_config.dtype == torch.float16
    assert _engine_config(checkpoints["deberta"], dtype="bfloat16").model_config.dtype == torch.bfloat16
    assert _engine_config(checkpoints["bert"]).model_config.dtype == torch.float16


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


def _cudagraph_mode(model, **kwargs):
    """The `cudagraph_mode` the engine's configuration is made from (EngineArgs after vLLM's and
    crossenc's defaults; the CPU build's platform then turns CUDA graphs off for every model)."""
    from vllm.engine.arg_utils import EngineArgs

    args = EngineArgs(model=model, runner="pooling", max_model_len=512, **kwargs)
    args.create_engine_config()
    mode = args.compilation_config.cudagraph_mode
    return None if mode is None else mode.name


def test_vllm_engine_config_on_a_gpu_runs_crossencs_encoders_without_cuda_graphs(checkpoints, monkeypatch):
    """vLLM's own models, a mode the user passes and a compiled encoder keep vLLM's choice."""
    monkeypatch.setattr(compat, "device_type", lambda: "cuda")
    monkeypatch.delenv(compat.TORCH_COMPILE_ENV, raising=False)
    assert _cudagraph_mode(checkpoints["bert"]) is None
    assert _cudagraph_mode(checkpoints["deberta"]) == "NONE"
    chosen = {"cudagraph_mode": "PIECEWISE"}
    assert _cudagraph_mode(checkpoints["deberta"], compilation_config=chosen) == "PIECEWISE"
    monkeypatch.setenv(compat.TORCH_COMPILE_ENV, "1")
    assert _cudagraph_mode(checkpoints["deberta"]) is None
    monkeypatch.setattr(compat, "device_type", lambda: "cpu")
    monkeypatch.delenv(compat.TORCH_COMPILE_ENV)
    assert _cudagraph_mode(checkpoints["deberta"]) is None


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


def test_crossencs_encoders_run_on_vllms_v1_model_runner_where_vllm_has_it(checkpoints, monkeypatch):
    """Where vLLM's platform has Triton (a GPU), vLLM 0.32 and 0.33 choose their V2 model runner
    by default; crossenc's encoders get V1 through the environment (read by the processes vLLM
    starts after the config). vLLM's own models and a user's choice keep vLLM's; a vLLM without
    V1 (0.34 and later) gets nothing, and its engine takes no packed requests."""
    import os

    import vllm.config.vllm as vllm_config_module

    from crossenc.model_executor.layers import pair_packing

    key = compat.V2_MODEL_RUNNER_ENV
    monkeypatch.setattr(vllm_config_module, "HAS_TRITON", True, raising=False)  # as on a GPU
    _engine_config(checkpoints["bert"])
    assert key not in os.environ
    deberta = _engine_config(checkpoints["deberta"])
    if not compat.has_v1_model_runner():
        assert key not in os.environ and not pair_packing.engine_splits_pairs(deberta)
        return
    assert os.environ[key] == "0"
    assert not deberta.use_v2_model_runner and pair_packing.engine_splits_pairs(deberta)
    _engine_config(checkpoints["bert"])  # crossenc's own setting does not outlive its engine
    assert key not in os.environ
    monkeypatch.setenv(key, "1")  # the user's choice
    chosen = _engine_config(checkpoints["deberta"])
    assert os.environ[key] == "1"
    assert chosen.use_v2_model_runner and not pair_packing.engine_splits_pairs(chosen)


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
    import torch

    dtype = str(scheduler.encoder_dtype("DebertaV2ForSequenceClassification", "pooling", "cpu", "auto",
                                        torch.float16, scheduler.cpu_flags())).removeprefix("torch.")
    assert (f"crossenc: DebertaV2ForSequenceClassification runs in {dtype} on the CPU (dtype 'auto'"
            in out.stderr) == (configure == "1"), out.stderr[-2000:]
