"""Tiny configs of each family crossenc resolves (two decoders, DeBERTa v2/v3 and v1), their
checkpoint directories, and a fresh interpreter that reports which model code it imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from transformers import LlamaConfig, Qwen3Config

from tests.utils import deberta_config, deberta_v1_config, save_tokenizer

# Words of tests.utils' tokenizer: each one id, so they can be classifier tokens.
GOOD_TOKENS = ["cat", "dog"]
# Not single ids there ("yes" -> y ##e ##s): validation must refuse them.
BAD_TOKENS = ["no", "yes"]

_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32, max_position_embeddings=512, pad_token_id=0)
FAMILIES = {
    "qwen3": (lambda v: Qwen3Config(vocab_size=v, **_DECODER),
              ("Qwen3ForSequenceClassification", "Qwen3ForCausalLM")),
    "llama": (lambda v: LlamaConfig(vocab_size=v, **_DECODER),
              ("LlamaForSequenceClassification", "LlamaForCausalLM")),
    "deberta": (lambda v: deberta_config("v3", vocab_size=v),
                ("DebertaV2ForSequenceClassification", "DebertaV2ForTokenClassification",
                 "DebertaV2Model")),
    "deberta-v1": (lambda v: deberta_v1_config("base", vocab_size=v),
                   ("DebertaForSequenceClassification", "DebertaForTokenClassification", "DebertaModel")),
}


def make_config(family: str, arch: str, num_labels: int = 1):
    config = FAMILIES[family][0](300)
    config.architectures = [arch]
    config.num_labels = num_labels
    return config


@pytest.fixture(scope="module")
def config_dirs(tmp_path_factory):
    """family -> a checkpoint directory with config.json and tokenizer (no weights: neither
    resolve nor vLLM's ModelConfig reads them)."""
    dirs = {}
    for family, (make, archs) in FAMILIES.items():
        path = tmp_path_factory.mktemp(family)
        config = make(save_tokenizer(path))
        config.architectures = [archs[0]]
        config.save_pretrained(path)
        dirs[family] = str(path)
    return dirs


_PRELUDE = '''
import sys
def model_modules():
    """Model code in sys.modules: vLLM model families, crossenc's model files, HF modeling."""
    infra = {"registry", "interfaces", "interfaces_base", "config"}
    return sorted(
        m for m in sys.modules
        if (m.startswith("vllm.model_executor.models.") and m.split(".")[3] not in infra)
        or m in ("crossenc.model_executor.models.adapters", "crossenc.model_executor.models.deberta_v2",
                 "crossenc.model_executor.models.deberta")
        # transformers' auto mappings are name tables; a family's modeling file is model code
        or (m.startswith("transformers.models.") and ".modeling_" in m and ".auto." not in m)
    )
'''


def run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", _PRELUDE + textwrap.dedent(code)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
