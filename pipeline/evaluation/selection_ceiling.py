"""How well can *any* query-side selector pick the optimal persona? A diagnostic for the
PEDNet issue's goal "CDNet beats the retrieval baseline".

    python -m pipeline.evaluation.selection_ceiling [--epochs 2] [--seed 1]

The optimal persona is labelled from the gold *response* (cos(Y, p_i)); a selector sees the
query X, the persona and the dialogue so far. This module measures, on labelled valid and
test turns (accuracy as ``pipeline.evaluation.selection`` counts it), how far stronger
query-side selectors get beyond the zero-shot MiniLM retrieval baseline (argmax cos(X, p_i),
the column ``query_similarities`` of the persona_labels stage):

- ``conditional_logit``: a softmax over the turn's persona sentences with linear features
  fitted on train: the query cosine; the most similar earlier bot response of the same
  dialogue to p_i (was p_i already talked about?); whether an earlier turn was labelled p_i.
- ``bilinear``: a selector on the frozen labeller vectors, s · u(X)ᵀ W u(p_i), W initialised
  at the identity (where it is the retrieval baseline) and fitted on train by cross-entropy
  with a ridge ``ridge`` · ||W − I||² that keeps it near retrieval (a selector that cannot
  overfit far); the ridge is chosen on valid accuracy. It passed the PEDNet issue's bar (40%
  of labelled test turns) and is now PEDNet's ``selection_prior: bilinear``
  (pipeline.preprocessing.persona_prior, written by ``python -m stages.persona_prior``).
- ``fine_tuned``: the labeller's own encoder (MiniLM, same layer and pooling) fine-tuned as a
  bi-encoder on train: cross-entropy of ``scale`` x cos(X, p_i) against the label, AdamW,
  evaluated after every epoch.

If neither gets clearly above retrieval, the query carries no more about which persona the
response will use, and a selector trained from scratch on 4.7k labelled turns (CDNet)
cannot beat retrieval for want of signal, not for a bug. Not a DVC stage; writes
reports/probes/selection_ceiling.json.
"""

from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from pipeline.evaluation.selection import retrieval_choices
from pipeline.io import load_params, read_parquet, run_stage, write_json
from pipeline.preprocessing import persona_prior as pp
from pipeline.preprocessing.persona_labels import _pad, encode, load_encoder, pooled, unit

log = logging.getLogger(__name__)
REPORT = "reports/probes/selection_ceiling.json"
FEATURES = ("query_cosine", "earlier_response_cosine", "earlier_label")


def load_turns(split: str, data: Path) -> list[dict]:
    """Turns with a persona, in dialogue order, with the features of ``FEATURES`` ([M, 3])."""
    prep = read_parquet(data / "prepared" / f"{split}.parquet",
                        columns=["dialogue_id", "turn", "query", "persona"]).to_pydict()
    lab = read_parquet(data / "persona_labels" / f"{split}.parquet",
                       columns=["optimal_persona", "similarities", "query_similarities"]).to_pydict()
    order = sorted(range(len(prep["turn"])), key=lambda i: (prep["dialogue_id"][i], prep["turn"][i]))
    seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    turns = []
    for i in order:
        persona = prep["persona"][i]
        if not persona:
            continue
        dialogue, label = prep["dialogue_id"][i], lab["optimal_persona"][i]
        query_cos = np.asarray(lab["query_similarities"][i], dtype=np.float64)
        said, labelled = seen.get(dialogue, (np.zeros(len(persona)), np.zeros(len(persona))))
        turns.append({"query": prep["query"][i], "persona": persona, "label": label,
                      "features": np.stack([query_cos, said, labelled], axis=1)})
        labelled = labelled.copy()
        if label is not None:
            labelled[label] = 1.0
        seen[dialogue] = (np.maximum(said, np.asarray(lab["similarities"][i])), labelled)
    return turns


def accuracy(choices: list[int], turns: list[dict]) -> float:
    """Share of labelled turns whose choice is the label."""
    pairs = [(c, t["label"]) for c, t in zip(choices, turns, strict=True) if t["label"] is not None]
    return sum(c == y for c, y in pairs) / max(len(pairs), 1)


def fit_conditional_logit(turns: list[dict], columns: list[int]) -> np.ndarray:
    """Weights of a softmax over each turn's sentences, fitted by maximum likelihood."""
    data = [(t["features"][:, columns], t["label"]) for t in turns if t["label"] is not None]

    def nll(w):
        total, grad = 0.0, np.zeros_like(w)
        for x, y in data:
            z = x @ w
            z = z - z.max()
            p = np.exp(z)
            total -= z[y] - np.log(p.sum())
            p /= p.sum()
            grad -= x[y] - p @ x
        return total, grad

    return minimize(nll, np.ones(len(columns)), jac=True, method="L-BFGS-B").x


def conditional_logit(splits: dict[str, list[dict]]) -> list[dict]:
    rows = []
    for columns in ([0], [0, 1], [0, 2], [0, 1, 2]):
        w = fit_conditional_logit(splits["train"], columns)
        rows.append({"features": [FEATURES[c] for c in columns], "weights": [round(float(x), 4) for x in w],
                     **{s: round(accuracy([int(np.argmax(t["features"][:, columns] @ w)) for t in turns], turns), 4)
                        for s, turns in splits.items()}})
    return rows


def cosine_choices(enc, turns: list[dict]) -> list[int]:
    sentences = sorted({s for t in turns for s in (t["query"], *t["persona"])})
    vectors = unit(encode(enc, sentences, desc=None))
    index = {s: i for i, s in enumerate(sentences)}
    return [int(np.argmax(vectors[[index[p] for p in t["persona"]]] @ vectors[index[t["query"]]])) for t in turns]


def sentence_vectors(enc, splits: dict[str, list[dict]]) -> tuple[np.ndarray, dict[str, int]]:
    """Unit labeller vectors of every query and persona sentence of ``splits``, and their index."""
    sentences = sorted({s for turns in splits.values() for t in turns for s in (t["query"], *t["persona"])})
    return unit(encode(enc, sentences, desc="encode (bilinear probe)")), {s: i for i, s in enumerate(sentences)}


def bilinear(splits: dict[str, list[dict]], vectors: np.ndarray, index: dict[str, int],
             ridges: tuple[float, ...] = pp.RIDGES, seed: int = 1) -> dict:
    """The frozen-vector bilinear selector (module docstring; pipeline.preprocessing.
    persona_prior fits it), one fit per ridge; the ridge of best valid accuracy is the choice."""
    turns = {name: pp.Turns.build([t["query"] for t in ts], [t["persona"] for t in ts], [t["label"] for t in ts], index)
             for name, ts in splits.items()}
    return pp.select(vectors, turns, ridges, seed)[2]


def fine_tune(splits: dict[str, list[dict]], epochs: int, seed: int, lr: float = 2e-5, scale: float = 20.0,
              batch_size: int = 32) -> list[dict]:
    import torch
    import torch.nn.functional as F

    cfg = load_params()["persona_labels"]
    torch.manual_seed(seed)
    enc = load_encoder(cfg["encoder"], cfg["layer"], cfg["max_length"], device="cpu")

    def evaluate(epoch: int) -> dict:
        enc.model.eval()
        return {"epoch": epoch, **{s: round(accuracy(cosine_choices(enc, splits[s]), splits[s]), 4)
                                   for s in ("valid", "test")}}

    train = [t for t in splits["train"] if t["label"] is not None]
    optimizer = torch.optim.AdamW(enc.model.parameters(), lr=lr, weight_decay=0.01)
    rng = random.Random(seed)
    curve = [evaluate(0)]
    for epoch in range(1, epochs + 1):
        enc.model.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        start, total = time.perf_counter(), 0.0
        for b in range(0, len(order), batch_size):
            rows = [train[i] for i in order[b : b + batch_size]]
            sentences = sorted({s for t in rows for s in (t["query"], *t["persona"])})
            index = {s: i for i, s in enumerate(sentences)}
            ids = enc.tokenizer(sentences, truncation=True, max_length=enc.max_length)["input_ids"]
            v = F.normalize(pooled(enc, _pad(enc, ids)), dim=-1)
            loss = sum(F.cross_entropy(scale * (v[[index[p] for p in t["persona"]]] @ v[index[t["query"]]])[None],
                                       torch.tensor([t["label"]])) for t in rows) / len(rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(rows)
        curve.append({**evaluate(epoch), "train_loss": round(total / len(train), 4)})
        log.info("epoch %d (%.0f s): %s", epoch, time.perf_counter() - start, curve[-1])
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (0: skip the fine-tuning)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bilinear", action=argparse.BooleanOptionalAction, default=True,
                        help="fit the frozen-vector bilinear selector (encodes every sentence once)")
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", default=REPORT)
    args = parser.parse_args(argv)
    splits = {s: load_turns(s, args.data) for s in ("train", "valid", "test")}
    retrieval = {s: round(accuracy(retrieval_choices([t["features"][:, 0].tolist() for t in turns]), turns), 4)
                 for s, turns in splits.items()}
    report = {"labelled_turns": {s: sum(t["label"] is not None for t in turns) for s, turns in splits.items()},
              "retrieval_minilm_query": retrieval, "conditional_logit": conditional_logit(splits)}
    if args.bilinear:
        cfg = load_params()["persona_labels"]
        enc = load_encoder(cfg["encoder"], cfg["layer"], cfg["max_length"], device="cpu")
        report["bilinear"] = bilinear(splits, *sentence_vectors(enc, splits), seed=args.seed)
    if args.epochs:
        report["fine_tuned"] = {"seed": args.seed, "curve": fine_tune(splits, args.epochs, args.seed)}
    write_json(report, args.out)


if __name__ == "__main__":
    run_stage(main)
