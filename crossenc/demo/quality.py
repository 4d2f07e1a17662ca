"""How well the demo model ranks, on held-out pairs from modules it never trained on.

Each held-out query gets its own passage and `distractors` random passages of other held-out
queries. Reported: how often the model ranks its own passage first (chance is 1/N for N
candidates, and the teacher's own accuracy is the reference), and the Spearman rank
correlation between the model's scores and the teacher's cosine similarities over all those
(query, candidate) pairs.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from crossenc.demo.build import BuildSettings, TeacherSignals, score_pairs
from crossenc.demo.corpus import Pair, split, stdlib_pairs


@dataclass(frozen=True)
class Quality:
    queries: int
    candidates: int  # N: the relevant passage plus N-1 distractors
    chance: float
    accuracy: float
    teacher_accuracy: float
    spearman: float

    def as_dict(self) -> dict:
        return asdict(self)


def held_out_pairs(settings: BuildSettings = BuildSettings()) -> list[Pair]:
    return split(stdlib_pairs(), settings.held_out_percent)[1]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ranks = [x.argsort().argsort().double() for x in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def candidate_lists(n: int, distractors: int, seed: int = 0) -> list[list[int]]:
    """For each held-out query i: [i, then `distractors` other pairs' indices], seeded."""
    rng = random.Random(seed)
    return [[i] + rng.sample([j for j in range(n) if j != i], distractors) for i in range(n)]


def measure(model, tokenizer, pairs: list[Pair], signals: TeacherSignals, distractors: int = 7,
            seed: int = 0, max_length: int = 512) -> Quality:
    """Score every (query, candidate) with the student and compare with the teacher."""
    cands = candidate_lists(len(pairs), distractors, seed)
    teacher_scores = torch.stack([signals.passages[c] @ signals.queries[i] for i, c in enumerate(cands)])
    queries = [pairs[i].query for i, c in enumerate(cands) for _ in c]
    passages = [pairs[j].passage for c in cands for j in c]
    # Batches of similar lengths waste less on padding; scores go back to their pairs' order.
    order = sorted(range(len(queries)), key=lambda k: len(queries[k]) + len(passages[k]))
    with torch.inference_mode():
        sorted_scores = score_pairs(model, tokenizer, [queries[k] for k in order],
                                    [passages[k] for k in order], max_length)
    scores = torch.empty_like(sorted_scores)
    scores[torch.tensor(order)] = sorted_scores
    scores = scores.view_as(teacher_scores).float()
    n = distractors + 1
    return Quality(
        queries=len(pairs),
        candidates=n,
        chance=1 / n,
        accuracy=float((scores.argmax(-1) == 0).double().mean()),
        teacher_accuracy=float((teacher_scores.argmax(-1) == 0).double().mean()),
        spearman=spearman(scores.flatten(), teacher_scores.flatten()),
    )


def evaluate(model_dir: Path, pairs: list[Pair], distractors: int = 7, seed: int = 0,
             max_length: int = 512) -> Quality:
    """`measure` for a saved checkpoint, loaded with transformers."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return measure(model, tokenizer, pairs, TeacherSignals.compute(pairs), distractors, seed, max_length)
