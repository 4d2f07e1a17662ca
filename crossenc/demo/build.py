"""Build the demo cross-encoder: a small DeBERTa-v3-shaped model distilled from all-MiniLM-L6-v2.

The student reads `[CLS] query [SEP] passage [SEP]` and learns to output the teacher's cosine
similarity of the two texts (as a logit, `scale * (cosine - shift)`), pointwise and, over each
query's candidates, listwise. Candidates are the query's own passage, passages the teacher finds
similar (hard negatives) and random ones. Word embeddings start from, and stay at, a PCA of the
teacher's, so words unseen in training still carry meaning. Everything is seeded; the result is
cached (see `cache.py`) under a key made of the settings and the versions that shape it.
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
from crossenc.demo.teacher import Teacher, load_tokenizer

# Bump when the recipe changes in a way the settings do not show, so old caches are not reused.
RECIPE_VERSION = 2
BUILD_INFO = "crossenc_demo_build.json"


@dataclass(frozen=True)
class BuildSettings:
    seed: int = 0
    init: str = "teacher"  # "teacher": the teacher's first layers; "pca": PCA word embeddings only
    hidden_size: int = 128  # "pca" only; "teacher" takes the teacher's width
    num_layers: int = 4
    num_heads: int = 4  # "pca" only
    position_buckets: int = 64
    max_length: int = 96  # tokens of the whole pair, specials included
    steps: int = 400
    queries_per_step: int = 16
    candidates: int = 4  # per query: its passage, hard negatives, the rest random
    hard_negatives: int = 1
    hard_negative_pool: int = 8  # hard negatives are drawn from the teacher's top passages
    lr: float = 5e-4
    head_lr: float = 5e-4  # the pooler and classifier, which start random
    dropout: float = 0.0
    bf16: bool = False
    warmup_steps: int = 40
    logit_scale: float = 10.0
    logit_shift: float = 0.35
    held_out_percent: int = 20
    max_train_pairs: int | None = None  # None: the whole training split

    @classmethod
    def quick(cls, seed: int = 0) -> "BuildSettings":
        """A build in seconds, for tests of the recipe itself (it does not rank well)."""
        return cls(seed=seed, hidden_size=32, num_layers=1, num_heads=2, steps=3, warmup_steps=1,
                   queries_per_step=4, max_train_pairs=32, max_length=64)

    def cache_key(self) -> str:
        import transformers

        from crossenc.demo.teacher import teacher_version

        blob = json.dumps(
            {"settings": dataclasses.asdict(self), "recipe": RECIPE_VERSION,
             "python": sys.version.split()[0], "torch": torch.__version__.split("+")[0],
             "transformers": transformers.__version__, "teacher": teacher_version()},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def student_config(settings: BuildSettings, vocab_size: int, pad_token_id: int, teacher_config=None):
    from transformers import DebertaV2Config

    width = {} if teacher_config is None else dict(
        hidden_size=teacher_config.hidden_size, num_attention_heads=teacher_config.num_attention_heads,
        intermediate_size=teacher_config.intermediate_size, hidden_act=teacher_config.hidden_act,
        layer_norm_eps=teacher_config.layer_norm_eps)
    return DebertaV2Config(**{
        "hidden_size": settings.hidden_size,
        "num_attention_heads": settings.num_heads,
        "intermediate_size": 4 * settings.hidden_size,
        **width,
    },
        vocab_size=vocab_size,
        num_hidden_layers=settings.num_layers,
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
        hidden_dropout_prob=settings.dropout,
        attention_probs_dropout_prob=settings.dropout,
        num_labels=1,
        architectures=["DebertaV2ForSequenceClassification"],
    )


@dataclass(frozen=True)
class TeacherSignals:
    """What the student learns from: unit query/passage embeddings and the teacher's word embeddings."""

    queries: torch.Tensor  # [N, D], row i for pair i's query
    passages: torch.Tensor  # [N, D]
    weights: dict[str, torch.Tensor]  # the teacher's BertModel state dict
    config: object  # its BertConfig

    @property
    def words(self) -> torch.Tensor:
        return self.weights["embeddings.word_embeddings.weight"]

    @classmethod
    def compute(cls, pairs: list[Pair]) -> "TeacherSignals":
        teacher = Teacher()
        return cls(teacher.embed([p.query for p in pairs]), teacher.embed([p.passage for p in pairs]),
                   teacher.weights(), teacher.config())


def _pca_embeddings(teacher_embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    centered = teacher_embeddings.double() - teacher_embeddings.double().mean(0)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    # SVD fixes each direction only up to its sign: make the largest coordinate positive.
    vh = vh[:dim]
    vh = vh * vh.gather(1, vh.abs().argmax(1, keepdim=True)).sign()
    reduced = centered @ vh.T
    return (reduced / reduced.std()).float()


def _init_from_teacher(model, signals: TeacherSignals, max_length: int) -> None:
    """Start the student as the teacher's first layers: BERT and DeBERTa layers differ only in
    DeBERTa's relative-position terms, which start near zero here and are learnt."""
    t = signals.weights
    cfg = model.config
    scale_factor = 1 + len(cfg.pos_att_type)
    emb = t["embeddings.word_embeddings.weight"] + t["embeddings.token_type_embeddings.weight"][0]
    # No absolute positions in DeBERTa-v3: their average keeps the embedding LayerNorm's input as it was.
    emb = emb + t["embeddings.position_embeddings.weight"][:max_length].mean(0)
    state = {
        "deberta.embeddings.word_embeddings.weight": emb,
        "deberta.embeddings.LayerNorm.weight": t["embeddings.LayerNorm.weight"],
        "deberta.embeddings.LayerNorm.bias": t["embeddings.LayerNorm.bias"],
        # Relative embeddings pass this LayerNorm: a small gain makes c2p/p2c start near zero.
        "deberta.encoder.LayerNorm.weight": torch.full((cfg.hidden_size,), 0.05),
    }
    for i in range(cfg.num_hidden_layers):
        bert, deb = f"encoder.layer.{i}.", f"deberta.encoder.layer.{i}."
        for ours, theirs, gain in (("attention.self.query_proj", "attention.self.query", scale_factor ** 0.5),
                                   ("attention.self.key_proj", "attention.self.key", 1.0),
                                   ("attention.self.value_proj", "attention.self.value", 1.0),
                                   ("attention.output.dense", "attention.output.dense", 1.0),
                                   ("attention.output.LayerNorm", "attention.output.LayerNorm", 1.0),
                                   ("intermediate.dense", "intermediate.dense", 1.0),
                                   ("output.dense", "output.dense", 1.0),
                                   ("output.LayerNorm", "output.LayerNorm", 1.0)):
            # DeBERTa divides scores by sqrt(d * scale_factor), BERT by sqrt(d): scale queries to match.
            for kind in ("weight", "bias"):
                state[deb + ours + "." + kind] = t[bert + theirs + "." + kind] * gain
    missing = set(state) - set(model.state_dict())
    if missing:
        raise RuntimeError(f"student has no tensors named {sorted(missing)}")
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)


def score_pairs(model, tokenizer, queries: list[str], passages: list[str], max_length: int,
                batch_size: int = 64) -> torch.Tensor:
    """The student's logits for each (query, passage), tokenized as a pair the way vLLM does."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(queries), batch_size):
        enc = tokenizer(queries[start:start + batch_size], passages[start:start + batch_size],
                        truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        enc.pop("token_type_ids", None)  # type_vocab_size=0: the model has no segment embeddings
        scores.append(model(**enc.to(device)).logits[:, 0])
    return torch.cat(scores)


class _Candidates:
    """Per query, the training candidates: its passage first, then hard and random negatives."""

    def __init__(self, signals: TeacherSignals, settings: BuildSettings, rng: random.Random) -> None:
        self.sim = signals.queries @ signals.passages.T
        own = self.sim.diagonal().clone()
        self.sim.fill_diagonal_(-2.0)  # never pick the query's own passage as a negative
        pool = min(settings.hard_negative_pool, len(own) - 1)
        self.hard = self.sim.topk(pool, dim=1).indices.tolist()
        self.sim.diagonal().copy_(own)
        self.settings, self.rng, self.n = settings, rng, len(own)

    def __call__(self, query: int) -> list[int]:
        hard = self.rng.sample(self.hard[query], min(self.settings.hard_negatives, len(self.hard[query])))
        chosen = [query, *hard]
        while len(chosen) < min(self.settings.candidates, self.n):
            c = self.rng.randrange(self.n)
            if c not in chosen:
                chosen.append(c)
        return chosen


def train_student(settings: BuildSettings, tokenizer, train: list[Pair], signals: TeacherSignals,
                  log=print, device: str = "cpu"):
    """A seeded DebertaV2ForSequenceClassification trained to reproduce the teacher's similarities."""
    from transformers import DebertaV2ForSequenceClassification

    start = time.time()
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    from_teacher = settings.init == "teacher"
    model = DebertaV2ForSequenceClassification(student_config(
        settings, len(tokenizer), tokenizer.pad_token_id, signals.config if from_teacher else None))
    words = model.get_input_embeddings()
    if from_teacher:
        _init_from_teacher(model, signals, settings.max_length)
    else:
        words.weight.data.copy_(_pca_embeddings(signals.words.float(), settings.hidden_size))
    words.weight.requires_grad_(False)
    model.to(device)

    candidates = _Candidates(signals, settings, rng)
    sim = candidates.sim.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
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
            torch.stack([sim[q, c] for q, c in zip(queries, cands)]) - settings.logit_shift)
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=settings.bf16):
            logits = score_pairs(
                model, tokenizer,
                [train[q].query for q, c in zip(queries, cands) for _ in c],
                [train[i].passage for c in cands for i in c],
                settings.max_length, batch_size=target.numel(),
            ).view_as(target).float()
        pointwise = torch.nn.functional.mse_loss(logits, target)
        listwise = torch.nn.functional.kl_div(
            logits.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="batchmean")
        loss = pointwise + listwise
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if (step + 1) % 50 == 0 or step + 1 == settings.steps:
            log(f"step {step + 1}/{settings.steps}: pointwise {pointwise.item():.3f} "
                f"listwise {listwise.item():.3f} ({time.time() - start:.0f}s)")
    words.weight.requires_grad_(True)
    return model.eval().cpu()


def build(settings: BuildSettings, out_dir: Path, log=print) -> None:
    """Train the student from scratch and save it (with the tokenizer) to `out_dir`."""
    start = time.time()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))  # the machine is assumed shared: two cores at most
    try:
        train, _ = split(stdlib_pairs(), settings.held_out_percent)
        train = train[: settings.max_train_pairs]
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
