"""The bilinear selection prior: a persona selector on the frozen labeller vectors.

    s · u(X)ᵀ W u(p_i)

u is the persona_labels encoder (MiniLM, unit vectors, frozen), X the query, p_i a persona
sentence. W starts at the identity, where the selector is the retrieval baseline argmax
cos(X, p_i), and is fitted on the train split's optimal-persona labels by cross-entropy
plus ``ridge`` · ||W − I||², which keeps it near retrieval: with weak ridges it memorises the
train turns (97% train, 33% test on the shared slice). One full-batch L-BFGS fit per ridge
of ``RIDGES``; the ridge of best valid accuracy is chosen. Accuracy is counted as
``pipeline.evaluation.selection`` counts it: over labelled turns.

Its logits are PEDNet's ``selection_prior: bilinear`` (the PEDNet issue's item 7: adopt the
selector only if it reaches 40% of labelled test turns; it reached 42.1% against
retrieval's 41.1%). ``pipeline.evaluation.selection_ceiling`` reports the same fits as a
diagnostic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.preprocessing.persona_labels import DECIMALS

log = logging.getLogger(__name__)

RIDGES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.001, 0.0)
PERSONA_PRIOR_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("bilinear_logits", pa.list_(pa.float32())),  # s · u(X)ᵀ W u(p_i) for every persona sentence
])


@dataclass
class Turns:
    """One split's turns as rows of the sentence-vector table."""

    query: np.ndarray  # [N] row of u(X)
    persona: np.ndarray  # [N, M] rows of u(p_i), -1 past the turn's persona
    label: np.ndarray  # [N] optimal persona, -1 for the None label or no persona

    @classmethod
    def build(cls, queries: list[str], personas: list[list[str]], labels: list[int | None],
              index: dict[str, int]) -> Turns:
        m = max((len(p) for p in personas), default=0)
        persona = np.full((len(queries), max(m, 1)), -1, dtype=np.int64)
        for i, p in enumerate(personas):
            persona[i, : len(p)] = [index[s] for s in p]
        label = np.asarray([-1 if y is None else y for y in labels], dtype=np.int64)
        return cls(np.asarray([index[q] for q in queries], dtype=np.int64), persona, label)

    def labelled(self) -> Turns:
        keep = self.label >= 0
        return Turns(self.query[keep], self.persona[keep], self.label[keep])


def logits(w, scale, vectors, turns: Turns):
    """[N, M] selector logits, -inf past each turn's persona (torch, any dtype of ``vectors``)."""
    import torch

    q = vectors[torch.from_numpy(turns.query)]
    mask = torch.from_numpy(turns.persona >= 0)
    p = vectors[torch.from_numpy(turns.persona.clip(min=0))]
    return (scale * torch.einsum("nd,nmd->nm", q @ w, p)).masked_fill(~mask, -torch.inf)


def accuracy(choices, turns: Turns) -> float:
    """Share of labelled turns whose choice is the label."""
    labelled = turns.label >= 0
    return float((np.asarray(choices)[labelled] == turns.label[labelled]).mean()) if labelled.any() else 0.0


def fit(vectors, train: Turns, ridge: float, s0: float, fit_w: bool = True):
    """(W, s) minimising CE + ridge · ||W − I||² over the labelled train turns, from (I, s0).
    ``fit_w`` false fits s alone at W = I (the retrieval cosine's conditional logit)."""
    import torch
    import torch.nn.functional as F

    train = train.labelled()
    y = torch.from_numpy(train.label)
    eye = torch.eye(vectors.shape[1], dtype=vectors.dtype)
    w = eye.clone().requires_grad_(fit_w)
    scale = torch.tensor(s0, dtype=vectors.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, scale] if fit_w else [scale], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits(w, scale, vectors, train), y) + ridge * (w - eye).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return w.detach(), scale.detach()


def select(vectors: np.ndarray, splits: dict[str, Turns], ridges=RIDGES, seed: int = 1):
    """One fit per ridge on ``splits['train']``, from s0 = the cosine's own fitted scale;
    returns (W, s, report) of the ridge with the best ``splits['valid']`` accuracy (the
    stronger ridge on a tie) and every fit's accuracies."""
    import torch

    torch.manual_seed(seed)
    v = torch.from_numpy(np.asarray(vectors, dtype=np.float64))
    eye = torch.eye(v.shape[1], dtype=v.dtype)
    s0 = float(fit(v, splits["train"], 0.0, 1.0, fit_w=False)[1])
    rows, fits = [], []
    for ridge in ridges:
        w, scale = fit(v, splits["train"], ridge, s0)
        with torch.no_grad():
            acc = {name: round(accuracy(logits(w, scale, v, t).argmax(1).numpy(), t), 4) for name, t in splits.items()}
        rows.append({"ridge": ridge, "scale": round(float(scale), 3),
                     "distance_from_identity": round(float((w - eye).norm()), 4), **acc})
        fits.append((w, scale))
        log.info("bilinear selector, ridge %g (%d/%d): %s", ridge, len(rows), len(ridges), rows[-1])
    best = max(range(len(rows)), key=lambda i: (rows[i]["valid"], rows[i]["ridge"]))
    with torch.no_grad():
        retrieval = {name: round(accuracy(logits(eye, 1.0, v, t).argmax(1).numpy(), t), 4) for name, t in splits.items()}
    report = {"cosine_scale": round(s0, 3), "retrieval": retrieval, "fits": rows, "chosen": rows[best]}
    return fits[best][0].numpy(), float(fits[best][1]), report


def prior_logits(vectors: np.ndarray, w: np.ndarray, scale: float, turns: Turns) -> list[np.ndarray]:
    """Per turn, s · u(X)ᵀ W u(p_i) for each of its persona sentences, rounded as the
    labeller's cosines are (BLAS summation order cannot change the bytes)."""
    q = vectors[turns.query] @ w
    out = []
    for i, row in enumerate(turns.persona):
        p = vectors[row[row >= 0]]
        out.append(np.round(scale * (p @ q[i]), DECIMALS).astype(np.float32))
    return out


def to_table(example_ids: list[str], prior: list[np.ndarray]) -> pa.Table:
    return pa.table({"example_id": pa.array(example_ids, pa.string()),
                     "bilinear_logits": pa.array([p.tolist() for p in prior], pa.list_(pa.float32()))},
                    schema=PERSONA_PRIOR_SCHEMA)


def load_selector(path) -> tuple[np.ndarray, float]:
    """(W, s) as stages.persona_prior saved them (selector.npz)."""
    with np.load(path) as f:
        return f["w"], float(f["scale"])


def query_logits(enc, w: np.ndarray, scale: float, query: str, persona: list[str]) -> np.ndarray:
    """The prior of one typed query, as the stage computes its bilinear_logits (for chat)."""
    from pipeline.preprocessing.persona_labels import encode, unit

    v = unit(encode(enc, [query, *persona], desc=None)).astype(np.float64)
    turn = Turns(np.zeros(1, dtype=np.int64), np.arange(1, len(v), dtype=np.int64)[None], np.full(1, -1))
    return prior_logits(v, w, scale, turn)[0]
