"""Build the demo cross-encoder: a small DeBERTa-v3-shaped model distilled from all-MiniLM-L6-v2.

The student reads `[CLS] query [SEP] passage [SEP]` and learns to output the teacher's cosine
similarity of the two texts (as a logit, `scale * (cosine - shift)`), pointwise and, over each
query's candidates, listwise. Candidates are the query's own passage, a passage the teacher finds
similar (a hard negative) and random ones.

The student starts as the teacher's first layers: a BERT layer is a DeBERTa layer without the
relative-position terms, which start near zero and are learnt. A student trained from random
weights learnt nothing useful in the few hundred steps two CPU cores allow; this one does.
Everything is seeded; the result is cached (see `cache.py`) under a key made of the settings and
the versions that shape it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from crossenc.demo.corpus import Pair, split, stdlib_pairs
from crossenc.demo.teacher import Teacher, load_tokenizer, teacher_version

# Bump when the recipe changes in a way the settings do not show, so old caches are not reused.
RECIPE_VERSION = 3
BUILD_INFO = "crossenc_demo_build.json"


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    num_layers: int = 3  # the teacher's first layers; width and heads are the teacher's
    position_buckets: int = 64
    max_length: int = 64  # training pairs' tokens, specials included
    steps: int = 800
    queries_per_step: int = 4
    candidates: int = 4  # per query: its passage, one hard negative, the rest random
    hard_negative_pool: int = 8  # the hard negative is drawn from the teacher's top passages
    lr: float = 2e-4
    head_lr: float = 1e-3  # the pooler and classifier, which start random
    warmup_steps: int = 50
    logit_scale: float = 10.0
    logit_shift: float = 0.35
    held_out_percent: int = 20
    max_train_pairs: int | None = None  # None: the whole training split

    @classmethod
    def quick(cls, seed: int = 0) -> "BuildSettings":
        """A build in seconds, for tests of the recipe itself (it does not rank well)."""
        return cls(seed=seed, num_layers=1, steps=3, warmup_steps=1, max_train_pairs=32)

    def cache_key(self) -> str:
        import transformers

        blob = json.dumps(
            {"settings": dataclasses.asdict(self), "recipe": RECIPE_VERSION,
             "python": sys.version.split()[0], "torch": torch.__version__.split("+")[0],
             "transformers": transformers.__version__, "teacher": teacher_version()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class TeacherSignals:
    """What the student learns from: unit query/passage embeddings and the teacher's own weights."""

    queries: torch.Tensor  # [N, D], row i for pair i's query
    passages: torch.Tensor  # [N, D]
    weights: dict[str, torch.Tensor]  # the teacher's BertModel state dict
    config: object  # its BertConfig

    @classmethod
    def compute(cls, pairs: list[Pair]) -> "TeacherSignals":
        teacher = Teacher()
        return cls(teacher.embed([p.query for p in pairs]), teacher.embed([p.passage for p in pairs]),
                   teacher.weights(), teacher.config())


def student_config(settings: BuildSettings, teacher_config, vocab_size: int, pad_token_id: int):
    from transformers import DebertaV2Config

    return DebertaV2Config(
        vocab_size=vocab_size,
        hidden_size=teacher_config.hidden_size,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=teacher_config.num_attention_heads,
        intermediate_size=teacher_config.intermediate_size,
        hidden_act=teacher_config.hidden_act,
        layer_norm_eps=teacher_config.layer_norm_eps,
        max_position_embeddings=512,
        # DeBERTa-v3's attention: relative positions in log buckets, shared key projections.
        relative_attention=True,
        position_buckets=settings.position_buckets,
        max_relative_positions=-1,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        pad_token_id=pad_token_id,
        # Few steps from a pretrained start: dropout only slows them down.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=1,
        architectures=["DebertaV2ForSequenceClassification"],
    )


def _init_from_teacher(model, signals: TeacherSignals, max_length: int) -> None:
    """Copy the teacher's embeddings and first layers into the student."""
    t = signals.weights
    cfg = model.config
    # Token types are always 0 for the teacher, and DeBERTa-v3 has no absolute positions: fold
    # both into the word embeddings (positions as their average), so the embedding LayerNorm
    # sees inputs like the teacher's.
    words = (t["embeddings.word_embeddings.weight"] + t["embeddings.token_type_embeddings.weight"][0]
             + t["embeddings.position_embeddings.weight"][:max_length].mean(0))
    state = {
        "deberta.embeddings.word_embeddings.weight": words,
        "deberta.embeddings.LayerNorm.weight": t["embeddings.LayerNorm.weight"],
        "deberta.embeddings.LayerNorm.bias": t["embeddings.LayerNorm.bias"],
        # Relative embeddings pass this LayerNorm: a small gain makes c2p/p2c start near zero.
        "deberta.encoder.LayerNorm.weight": torch.full((cfg.hidden_size,), 0.05),
    }
    # DeBERTa divides scores by sqrt(head_dim * (1 + len(pos_att_type))), BERT by sqrt(head_dim).
    query_gain = (1 + len(cfg.pos_att_type)) ** 0.5
    names = (("attention.self.query_proj", "attention.self.query"),
             ("attention.self.key_proj", "attention.self.key"),
             ("attention.self.value_proj", "attention.self.value"),
             ("attention.output.dense", "attention.output.dense"),
             ("attention.output.LayerNorm", "attention.output.LayerNorm"),
             ("intermediate.dense", "intermediate.dense"),
             ("output.dense", "output.dense"),
             ("output.LayerNorm", "output.LayerNorm"))
    for i in range(cfg.num_hidden_layers):
        for ours, theirs in names:
            gain = query_gain if ours.endswith("query_proj") else 1.0
            for kind in ("weight", "bias"):
                state[f"deberta.encoder.layer.{i}.{ours}.{kind}"] = t[f"encoder.layer.{i}.{theirs}.{kind}"] * gain
    unknown = set(state) - set(model.state_dict())
    if unknown:
        raise RuntimeError(f"the student has no tensors named {sorted(unknown)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def score_pairs(model, tokenizer, queries: list[str], passages: list[str], max_length: int,
                batch_size: int = 64) -> torch.Tensor:
    """The student's logits for each (query, passage), tokenized as a pair the way vLLM does."""
    scores = []
    for start in range(0, len(queries), batch_size):
        enc = tokenizer(queries[start:start + batch_size], passages[start:start + batch_size],
                        truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc.pop("token_type_ids", None)  # type_vocab_size=0: the model has no segment embeddings
        scores.append(model(**enc).logits[:, 0])
    return torch.cat(scores)


class _Candidates:
    """Per query, the training candidates: its passage first, then a hard and random negatives."""

    def __init__(self, signals: TeacherSignals, settings: BuildSettings, rng: random.Random) -> None:
        self.sim = signals.queries @ signals.passages.T
        own = self.sim.diagonal().clone()
        self.sim.fill_diagonal_(-2.0)  # never pick the query's own passage as a negative
        pool = min(settings.hard_negative_pool, len(own) - 1)
        self.hard = self.sim.topk(pool, dim=1).indices.tolist()
        self.sim.diagonal().copy_(own)
        self.settings, self.rng, self.n = settings, rng, len(own)

    def __call__(self, query: int) -> list[int]:
        chosen = [query, self.rng.choice(self.hard[query])]
        while len(chosen) < min(self.settings.candidates, self.n):
            c = self.rng.randrange(self.n)
            if c not in chosen:
                chosen.append(c)
        return chosen


def train_student(settings: BuildSettings, tokenizer, train: list[Pair], signals: TeacherSignals, log=print):
    """A seeded DebertaV2ForSequenceClassification trained to reproduce the teacher's similarities."""
    from transformers import DebertaV2ForSequenceClassification

    start = time.time()
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    model = DebertaV2ForSequenceClassification(
        student_config(settings, signals.config, len(tokenizer), tokenizer.pad_token_id))
    _init_from_teacher(model, signals, settings.max_length)
    words = model.get_input_embeddings().weight
    words.requires_grad_(False)  # the teacher's vocabulary stays as it is, also for unseen words

    candidates = _Candidates(signals, settings, rng)
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("deberta.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("deberta.")]
    opt = torch.optim.AdamW([{"params": body, "lr": settings.lr}, {"params": head, "lr": settings.head_lr}],
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(
        (step + 1) / settings.warmup_steps,
        max(0.0, (settings.steps - step) / max(1, settings.steps - settings.warmup_steps))))
    order: list[int] = []
    model.train()
    for step in range(settings.steps):
        if len(order) < settings.queries_per_step:
            order += rng.sample(range(len(train)), len(train))
        queries, order = order[: settings.queries_per_step], order[settings.queries_per_step:]
        cands = [candidates(q) for q in queries]
        target = settings.logit_scale * (
            torch.stack([candidates.sim[q, c] for q, c in zip(queries, cands)]) - settings.logit_shift)
        logits = score_pairs(
            model, tokenizer,
            [train[q].query for q, c in zip(queries, cands) for _ in c],
            [train[i].passage for c in cands for i in c],
            settings.max_length, batch_size=target.numel(),
        ).view_as(target)
        pointwise = torch.nn.functional.mse_loss(logits, target)
        listwise = torch.nn.functional.kl_div(
            logits.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="batchmean")
        loss = pointwise + listwise
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(body + head, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == settings.steps:
            log(f"step {step + 1}/{settings.steps}: pointwise {pointwise.item():.3f} "
                f"listwise {listwise.item():.3f} ({time.time() - start:.0f}s)")
    words.requires_grad_(True)
    return model.eval()


def build(settings: BuildSettings, out_dir: Path, log=print) -> None:
    """Train the student and save it (with the teacher's tokenizer) to `out_dir`."""
    start = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))  # the machine is assumed shared: two cores at most
    try:
        log("reading the Python standard library's docstrings into query/passage pairs")
        train, _ = split(stdlib_pairs(), settings.held_out_percent)
        train = train[: settings.max_train_pairs]
        log(f"embedding {len(train)} training pairs with the teacher, all-MiniLM-L6-v2 "
            f"({time.time() - start:.0f}s)")
        signals = TeacherSignals.compute(train)
        log(f"teacher embedded {len(train)} training pairs ({time.time() - start:.0f}s)")
        model = train_student(settings, load_tokenizer(), train, signals, log=log)
    finally:
        torch.set_num_threads(threads)

    model.save_pretrained(out_dir)
    tokenizer = load_tokenizer()
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out_dir)
    info = {"settings": dataclasses.asdict(settings), "recipe": RECIPE_VERSION,
            "train_pairs": len(train), "build_seconds": round(time.time() - start, 1)}
    (out_dir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
