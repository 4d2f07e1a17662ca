"""Which prompt an LLM reranker's (query, document) pair gets, through vLLM's own scoring
processor objects on the installed release (no engine): an explicit chat template first, then
the checkpoint's saved sentence-transformers template (read by vLLM 0.33 and later), then the
preset's template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from transformers import AutoTokenizer  # noqa: E402

from crossenc import compat, presets  # noqa: E402
from crossenc.cli import main as cli  # noqa: E402
from tests.convert.tiny import DOCUMENTS, QUERIES, REFERENCE_PROMPTS  # noqa: E402
from tests.utils import scoring_processor  # noqa: E402

SAVED_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                  "{% endfor %}<|im_start|>assistant\n")
EXPLICIT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
READS_SAVED_TEMPLATES = compat.parse_version(compat.installed_vllm_version()) >= (0, 33, 0)


def _save_sentence_transformers_cross_encoder(path: Path) -> None:
    """What sentence-transformers saves for a CrossEncoder that formats pairs as messages with
    the tokenizer's chat template."""
    (path / "chat_template.jinja").write_text(SAVED_TEMPLATE)
    (path / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "CrossEncoder"}))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}]))
    (path / "sentence_bert_config.json").write_text(json.dumps({
        "transformer_task": "sequence-classification",
        "modality_config": {"message": {"method": "forward", "method_output_name": "logits"}},
        "processing_kwargs": {"chat_template": {}},
    }))


@pytest.fixture(scope="module")
def checkpoints(causal_lm_dir, tmp_path_factory):
    """A converted qwen3-reranker, without and with a saved sentence-transformers template."""
    src = causal_lm_dir("qwen3")
    out = {}
    for name in ("preset-only", "saved-template"):
        path = tmp_path_factory.mktemp(name)
        assert cli(["convert", src, "-o", str(path), "--preset", "qwen3-reranker"]) == 0
        if name == "saved-template":
            _save_sentence_transformers_cross_encoder(path)
        out[name] = path
    return out


def _processor(path: Path):
    return scoring_processor(path)


def _prompt_ids(processor, query, document, chat_template=None) -> list[int]:
    _, prompt = processor.get_score_prompt(query, document, {}, chat_template=chat_template)
    return list(prompt["prompt_token_ids"])


def test_the_preset_formats_a_checkpoint_without_a_saved_template(checkpoints):
    processor = _processor(checkpoints["preset-only"])
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["preset-only"])
    for query, document in zip(QUERIES, DOCUMENTS):
        assert _prompt_ids(processor, query, document) == REFERENCE_PROMPTS["qwen3-reranker"](
            tokenizer, query, document)


def test_a_saved_template_wins_over_the_preset_where_vllm_reads_it(checkpoints):
    """vLLM 0.33+ formats the pair with the checkpoint's saved template (the prompt
    sentence-transformers builds for it); earlier releases do not read it: the preset's."""
    path = checkpoints["saved-template"]
    processor = _processor(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    query, document = QUERIES[0], DOCUMENTS[0]
    preset_ids = REFERENCE_PROMPTS["qwen3-reranker"](tokenizer, query, document)
    got = _prompt_ids(processor, query, document)
    if not READS_SAVED_TEMPLATES:
        assert got == preset_ids
        return
    assert got != preset_ids
    text = tokenizer.decode(got)
    assert text.startswith("<|im_start|>query") and "<|im_start|>document" in text
    assert text.rstrip().endswith("<|im_start|>assistant")
    assert query in text and document in text and "Judge whether" not in text
    # Exactly vLLM's own formatting of the saved template.
    base = compat.scoring().CrossEncoderIOProcessor
    _, vllm_prompt = base.get_score_prompt(processor, query, document, {})
    assert got == list(vllm_prompt["prompt_token_ids"])


@pytest.mark.parametrize("name", ["preset-only", "saved-template"])
def test_an_explicit_chat_template_wins_over_both(checkpoints, name):
    processor = _processor(checkpoints[name])
    tokenizer = AutoTokenizer.from_pretrained(checkpoints[name])
    query, document = QUERIES[1], DOCUMENTS[1]
    text = tokenizer.decode(_prompt_ids(processor, query, document, chat_template=EXPLICIT_TEMPLATE))
    assert text.startswith("[") and query in text and document in text and "<|im_start|>" not in text
    assert presets.get("qwen3-reranker").template.text(query, document) not in text
