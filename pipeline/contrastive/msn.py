"""MSN as GCL's matching model: data, training, R10@k evaluation, and scoring the
candidate pools of ``data/groups`` (stages ``msn`` and ``score_groups``; methods §3).

Why not ``pipeline.train``: that loop is built around generators (``DialogueDataset``
batches of a single query, validation by token NLL, ReduceLROnPlateau on it). MSN reads
the last N utterances of the multi-turn context, trains on (context, response, label)
pairs with fresh random negatives each epoch and is selected by R10@1 on valid, so it
keeps this short loop of its own (Adam, clipping, per-epoch validation, best checkpoint).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.contrastive.groups import pool_jobs
from pipeline.dataset import Vocab
from pipeline.io import InputError, progress, read_parquet, save_torch
from pipeline.models.msn import MSN, MSNConfig, context_tensor, response_tensor
from pipeline.schema import GROUPS, SILENCE

log = logging.getLogger(__name__)


# -- data --------------------------------------------------------------------------------
def context_utterances(history: list[str], query: str) -> list[str]:
    """The multi-turn context as utterances, oldest first: the history and the query; the
    bot's opening turn (no history, query __silence__) is the one utterance __silence__."""
    utterances = [u for u in (*(history or []), query) if u and u != SILENCE]
    return utterances or [SILENCE]


@dataclass
class MSNData:
    contexts: list[list[np.ndarray]]  # per example: utterance ids, oldest first
    responses: list[np.ndarray]
    response_texts: list[str]

    def __len__(self) -> int:
        return len(self.responses)


def load_msn_data(path: str | Path, vocab: Vocab, max_words: int) -> MSNData:
    t = read_parquet(path, columns=["history", "query", "response"]).to_pydict()
    enc = vocab.encode
    contexts = [[enc(u, max_words) for u in context_utterances(h, q)] for h, q in zip(t["history"], t["query"], strict=True)]
    responses = [enc(r, max_words) for r in t["response"]]
    return MSNData(contexts, responses, t["response"])


def random_negatives(texts: list[str], rows: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """[len(rows), count] random other rows whose response text differs from the row's
    (so a negative is never a copy of the positive)."""
    n = len(texts)
    out = np.empty((len(rows), count), dtype=np.int64)
    for i, row in enumerate(rows):
        chosen: list[int] = []
        while len(chosen) < count:
            j = int(rng.integers(n))
            if j != row and texts[j] != texts[row] and j not in chosen:
                chosen.append(j)
        out[i] = chosen
    return out


def make_batch(data: MSNData, context_rows, response_rows, pair_context, pair_response, cfg: MSNConfig,
               label=None) -> dict[str, torch.Tensor]:
    """Contexts and responses encoded once each; pairs index into them."""
    batch = {"utterances": context_tensor([data.contexts[i] for i in context_rows], cfg.max_utterances,
                                          cfg.max_words, cfg.pad),
             "responses": response_tensor([data.responses[i] for i in response_rows], cfg.max_words, cfg.pad),
             "pair_context": torch.as_tensor(np.asarray(pair_context), dtype=torch.long),
             "pair_response": torch.as_tensor(np.asarray(pair_response), dtype=torch.long)}
    if label is not None:
        batch["label"] = torch.as_tensor(np.asarray(label), dtype=torch.float32)
    return batch


# -- evaluation --------------------------------------------------------------------------
def ranking_metrics(scores: np.ndarray) -> dict[str, float]:
    """scores [E, C], column 0 the positive -> R_C@1, R_C@2, R_C@5 and MRR. Ties count
    against the positive (a constant scorer gets R@1 = 0, not 1)."""
    scores = np.asarray(scores, dtype=np.float64)
    c = scores.shape[1]
    rank = 1 + (scores[:, 1:] >= scores[:, :1]).sum(1)
    out = {f"R{c}@{k}": float((rank <= k).mean()) for k in (1, 2, 5) if k < c}
    out["MRR"] = float((1.0 / rank).mean())
    return out


@torch.no_grad()
def evaluate_msn(model: MSN, data: MSNData, candidates: np.ndarray, batch_contexts: int = 32) -> dict[str, float]:
    """``candidates`` [E, C] response rows, column 0 each example's own response."""
    was = model.training
    model.eval()
    e, c = candidates.shape
    scores = np.empty((e, c), dtype=np.float32)
    for s in range(0, e, batch_contexts):
        rows = np.arange(s, min(s + batch_contexts, e))
        cand = candidates[rows].reshape(-1)
        batch = make_batch(data, rows, cand, np.repeat(np.arange(len(rows)), c), np.arange(len(cand)), model.config)
        scores[rows] = model.pair_logits(batch).view(len(rows), c).numpy()
    model.train(was)
    return ranking_metrics(scores)


def valid_candidates(data: MSNData, count: int, seed: int, limit: int | None = None) -> np.ndarray:
    """[E, count]: each example's response then count − 1 random other valid responses (seeded)."""
    rows = np.arange(len(data) if not limit else min(limit, len(data)))
    negs = random_negatives(data.response_texts, rows, count - 1, np.random.default_rng(seed))
    return np.concatenate([rows[:, None], negs], 1)


# -- training ----------------------------------------------------------------------------
@dataclass
class MSNTrainConfig:
    epochs: int = 2
    batch_size: int = 32  # contexts per step, each with its response and one random negative
    lr: float = 1e-3
    clip: float = 5.0
    seed: int = 1
    eval_candidates: int = 10  # 1 positive : 9 negatives
    eval_examples: int | None = None  # valid examples for R10@k (None = all)
    max_steps: int = 0  # 0 = no limit (tests)

    @classmethod
    def from_params(cls, params: dict) -> MSNTrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in params.items() if k in names})


def train_msn(model: MSN, train: MSNData, valid: MSNData, cfg: MSNTrainConfig,
              checkpoint: str | Path | None = None) -> dict:
    """BCE on 1:1 random negatives (fresh each epoch, seeded); validate R10@k after every
    epoch; keep the best by R10@1 (then MRR). Returns the metrics of the best epoch."""
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    cands = valid_candidates(valid, cfg.eval_candidates, cfg.seed, cfg.eval_examples)
    best: dict | None = None
    step, start = 0, time.perf_counter()
    n = len(train)
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch])
        order = rng.permutation(n)
        negatives = random_negatives(train.response_texts, order, 1, rng)[:, 0]
        model.train()
        bar = progress(range(0, n, cfg.batch_size), desc=f"msn epoch {epoch}")
        total, correct, pairs = 0.0, 0.0, 0
        for s in bar:
            rows, neg = order[s : s + cfg.batch_size], negatives[s : s + cfg.batch_size]
            c = len(rows)
            batch = make_batch(train, rows, np.concatenate([rows, neg]), np.tile(np.arange(c), 2),
                               np.arange(2 * c), model.config, label=np.r_[np.ones(c), np.zeros(c)])
            out = model.loss(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            total += out["loss"].item() * 2 * c
            correct += float(out["correct"])
            pairs += 2 * c
            bar.set_postfix(loss=f"{total / pairs:.3f}", acc=f"{correct / pairs:.3f}")
            if cfg.max_steps and step >= cfg.max_steps:
                break
        bar.close()
        metrics = evaluate_msn(model, valid, cands)
        metrics.update(epoch=epoch + 1, steps=step, train_loss=total / max(pairs, 1),
                       train_acc=correct / max(pairs, 1), train_seconds=round(time.perf_counter() - start, 1))
        key = f"R{cfg.eval_candidates}@1"
        better = best is None or (metrics[key], metrics["MRR"]) > (best[key], best["MRR"])
        log.info("msn epoch %d: train loss %.4f acc %.3f; valid %s%s", epoch + 1, metrics["train_loss"],
                 metrics["train_acc"], " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.startswith(("R", "M"))),
                 " (best)" if better else "")
        if better:
            best = metrics
            if checkpoint is not None:
                save_msn(model, checkpoint, metrics)
        if cfg.max_steps and step >= cfg.max_steps:
            break
    return best or {}


def save_msn(model: MSN, path: str | Path, metrics: dict) -> None:
    # no timings in the checkpoint: its bytes must not depend on how fast the machine is
    kept = {k: v for k, v in metrics.items() if not k.endswith("_seconds")}
    save_torch({**model.checkpoint(), "metrics": kept}, path)


def load_msn(path: str | Path) -> MSN:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no MSN checkpoint (run the msn stage first)")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    if ck.get("kind") != "msn":
        raise InputError(path, "not an MSN checkpoint")
    return MSN.from_checkpoint(ck).eval()


def build_msn(params: dict, vocab: Vocab, embeddings: np.ndarray) -> MSN:
    cfg = MSNConfig.from_params(params, len(vocab), int(embeddings.shape[1]))
    return MSN(cfg, embeddings)


# -- scoring the candidate pools ---------------------------------------------------------
@torch.no_grad()
def score_pools(model: MSN, data: MSNData, groups: pa.Table, max_pairs: int = 512) -> pa.Table:
    """Fill ``msn_response_side`` = MSN(c, r') and ``msn_context_side`` = MSN(c', r) for
    every candidate of every pool. Pairs are grouped by context, so each context goes
    through the (response-independent) selector once per chunk of at most ``max_pairs``."""
    model.eval()
    cand, jobs = pool_jobs(groups, len(data))
    n = len(cand)
    jobs = sorted(map(tuple, jobs.tolist()))  # by context, then response: deterministic and context-grouped
    q = [[np.zeros(len(r or []), dtype=np.float32) for r in cand] for _ in range(2)]
    bar = progress(total=len(jobs), desc="msn scoring", unit="pair")
    for s in range(0, len(jobs), max_pairs):
        chunk = jobs[s : s + max_pairs]
        ctx_rows = sorted({j[0] for j in chunk})
        resp_rows = sorted({j[1] for j in chunk})
        cpos = {r: k for k, r in enumerate(ctx_rows)}
        rpos = {r: k for k, r in enumerate(resp_rows)}
        batch = make_batch(data, ctx_rows, resp_rows, [cpos[j[0]] for j in chunk], [rpos[j[1]] for j in chunk],
                           model.config)
        prob = torch.sigmoid(model.pair_logits(batch)).numpy()
        for (_, _, target, slot, side), p in zip(chunk, prob, strict=True):
            q[side][target][slot] = p
        bar.update(len(chunk))
    bar.close()
    present = [c is not None for c in cand]
    table = groups
    for name, side in (("msn_response_side", 0), ("msn_context_side", 1)):
        values = pa.array([q[side][i].tolist() if present[i] else None for i in range(n)], type=pa.list_(pa.float32()))
        table = table.set_column(table.schema.get_field_index(name), name, values)
    return table.cast(GROUPS)
