"""Group-wise contrastive learning (GCL, Cai et al. 2020; methods §3).

Three pieces, each usable alone:

1. **Group selection** (:func:`select_group`): from an example's BM25 candidate pool and
   matching probabilities q (MSN, or normalised BM25), s = clamp(2(q − 0.5), −1, 1); on
   each side the k best-matching candidates are positives and the k worst negatives. The
   response side pairs (c, r'), the context side (c', r); the original pair (c, r) is a
   positive with s = 1: 2k + 1 positives and 2k negatives.
2. **Losses** on D = log p_m(r|c) − log p_n(r|c) (target minus frozen reference):
   :func:`paper_terms` (Eq. 4) and :func:`code_terms` (the authors' ℓ(s, D)).
3. **The objective** (:class:`GroupContrastive`) for ``pipeline.train``'s hook: it looks
   up each training example's group, builds ONE padded batch of all its pairs, calls
   ``sequence_log_prob`` once, and reads the reference's log-probabilities from the cache
   written by the ``reference_scores`` stage (the reference is frozen and in eval mode,
   so its scores never change).

Eq. 4, per example, with Σ over its positives/negatives:
    L = (1/|P|) Σ −log[s⁺ σ(D⁺)] + (1/|N|) Σ −log[1 + s⁻ σ(D⁻)]
averaged over the batch. −log[s σ(D)] = −log s − log σ(D): s⁺ only shifts the loss, so
every positive pushes its D up equally hard; s⁻ scales how hard a negative pushes down.
Eq. 4 needs s⁺ > 0 (and s⁻ ≤ 0 to push down): a "best" candidate that MSN still rates
q ≤ 0.5 is no positive (dropped), a "worst" one with q > 0.5 no negative (dropped).
|P| and |N| count the pairs kept, so group sizes can vary (ablations, empty pools).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from pipeline.dataset import Batch, DialogueDataset
from pipeline.io import InputError, progress
from pipeline.models import Generator
from pipeline.params_schema import validate as validate_params
from pipeline.schema import REFERENCE_SCORES, SCORED_GROUPS

log = logging.getLogger(__name__)

ORIGINAL, RESPONSE_SIDE, CONTEXT_SIDE = "original", "response", "context"
SIDES = (RESPONSE_SIDE, CONTEXT_SIDE)
SELECTIONS = ("msn", "bm25", "random")


# -- 1. group selection ------------------------------------------------------------------
def matching_score(q: np.ndarray | float) -> np.ndarray:
    """Matching probability q in (0, 1) -> s = clamp(2(q − 0.5), −1, 1)."""
    return np.clip(2.0 * (np.asarray(q, dtype=np.float64) - 0.5), -1.0, 1.0)


def bm25_probability(scores: np.ndarray) -> np.ndarray:
    """Normalised BM25 as a stand-in for q: min-max over the example's pool (best 1, worst
    0; a pool of equal scores gives 0.5 everywhere, i.e. s = 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0:
        return scores
    lo, hi = scores.min(), scores.max()
    if hi - lo <= 0:
        return np.full_like(scores, 0.5)
    return (scores - lo) / (hi - lo)


def best_and_worst(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the k highest q (best first) and the k lowest (worst first), disjoint;
    ties go to the earlier candidate. A pool smaller than 2k is split best-first."""
    n = len(q)
    pos = np.arange(n)
    n_best = min(k, (n + 1) // 2)
    n_worst = min(k, n - n_best)
    best = np.lexsort((pos, -q))[:n_best]
    taken = np.zeros(n, dtype=bool)
    taken[best] = True
    worst = [i for i in np.lexsort((pos, q)) if not taken[i]][:n_worst]
    return best, np.asarray(worst, dtype=np.int64)


@dataclass
class Group:
    """One training example's group: pairs as (context row, response row), s, side."""

    positive_context_rows: list[int]
    positive_response_rows: list[int]
    positive_scores: list[float]
    positive_sides: list[str]
    negative_context_rows: list[int]
    negative_response_rows: list[int]
    negative_scores: list[float]
    negative_sides: list[str]


def select_group(row: int, candidates: np.ndarray, q_response: np.ndarray, q_context: np.ndarray,
                 k: int) -> Group:
    """The group of training row ``row``: the original pair (s = 1), then per side the k
    best candidates (positives, best first) and the k worst (negatives, worst first).

    Response side: (c_row, r_cand) scored by ``q_response``; context side: (c_cand, r_row)
    scored by ``q_context``.
    """
    g = Group([row], [row], [1.0], [ORIGINAL], [], [], [], [])
    candidates = np.asarray(candidates, dtype=np.int64)
    for side, q in ((RESPONSE_SIDE, q_response), (CONTEXT_SIDE, q_context)):
        q = np.asarray(q, dtype=np.float64)
        if len(q) != len(candidates):
            raise ValueError(f"{len(q)} {side}-side scores for {len(candidates)} candidates")
        s = matching_score(q)
        best, worst = best_and_worst(q, k)
        for idx, (crows, rrows, scores, sides) in (
            (best, (g.positive_context_rows, g.positive_response_rows, g.positive_scores, g.positive_sides)),
            (worst, (g.negative_context_rows, g.negative_response_rows, g.negative_scores, g.negative_sides)),
        ):
            for i in idx:
                cand = int(candidates[i])
                crows.append(row if side == RESPONSE_SIDE else cand)
                rrows.append(cand if side == RESPONSE_SIDE else row)
                scores.append(float(s[i]))
                sides.append(side)
    return g


def random_group(row: int, n_rows: int, k: int, rng: np.random.Generator, eligible: np.ndarray | None = None) -> Group:
    """Naive random negatives (the authors' ``naive_neg_sampling``): the original pair is
    the only positive; k random training rows per side give negatives with s = −1."""
    g = Group([row], [row], [1.0], [ORIGINAL], [], [], [], [])
    pool = np.flatnonzero(eligible) if eligible is not None else np.arange(n_rows)
    pool = pool[pool != row]
    for side in SIDES:
        for cand in rng.choice(pool, size=min(k, len(pool)), replace=False):
            cand = int(cand)
            g.negative_context_rows.append(row if side == RESPONSE_SIDE else cand)
            g.negative_response_rows.append(cand if side == RESPONSE_SIDE else row)
            g.negative_scores.append(-1.0)
            g.negative_sides.append(side)
    return g


def select_groups(groups: pa.Table, k: int, selection: str = "msn", seed: int = 1) -> pa.Table:
    """``data/msn_scores`` rows (schema.GROUPS with the MSN columns) -> schema.SCORED_GROUPS."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection {selection!r}: one of {SELECTIONS}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cols = groups.to_pydict()
    n = groups.num_rows
    # Random negatives come from rows with a non-empty pool (a real multi-turn context).
    eligible = np.asarray([bool(c) for c in cols["candidate_rows"]])
    out: dict[str, list] = {name: [] for name in SCORED_GROUPS.names}
    for row in range(n):
        cands = np.asarray(cols["candidate_rows"][row] or [], dtype=np.int64)
        if selection == "random":
            rng = np.random.default_rng([seed, row])
            g = random_group(row, n, k, rng, eligible) if len(cands) else random_group(row, n, 0, rng)
        else:
            if selection == "msn":
                qr, qc = cols["msn_response_side"][row], cols["msn_context_side"][row]
                if qr is None or qc is None:
                    raise InputError("data/msn_scores/train.parquet", "MSN probabilities missing", row)
            else:
                qr = qc = bm25_probability(np.asarray(cols["bm25_scores"][row] or [], dtype=np.float64))
            g = select_group(row, cands, np.asarray(qr), np.asarray(qc), k)
        out["example_id"].append(cols["example_id"][row])
        for f in fields(Group):
            out[f.name].append(getattr(g, f.name))
    return pa.Table.from_pydict(out, schema=SCORED_GROUPS)


# -- 2. losses ---------------------------------------------------------------------------
def _log_mix(a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """log(a + exp(log_b)) for a >= 0 (a = 0 gives log_b), stable."""
    return torch.logaddexp(torch.log(a), log_b)


def paper_terms(d: torch.Tensor, s: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Per-pair terms of Eq. 4: −log(s σ(D)) for positives (s in (0, 1]),
    −log(1 + s σ(D)) for negatives (s in [−1, 0])."""
    a = s.abs().clamp(max=1.0)
    pos = -torch.log(a.clamp(min=1e-12)) - F.logsigmoid(d)
    # 1 + s σ(D) = (1 − |s|) + |s| σ(−D) for s <= 0
    neg = -_log_mix(1.0 - a, torch.log(a.clamp(min=1e-12)) + F.logsigmoid(-d))
    neg = torch.where(a > 0, neg, torch.zeros_like(neg))
    return torch.where(positive, pos, neg)


def code_terms(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The authors' ℓ(s, D) = −log(½(1 − s) + s σ(D)) for any s in [−1, 1] (equals Eq. 4
    at s = ±1; s = 0 gives the constant log 2). Written as
    −log(½(1 − |s|) + |s| σ(sign(s) D)), stable for large |D|."""
    a = s.abs().clamp(max=1.0)
    sign = torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
    return -_log_mix(0.5 * (1.0 - a), torch.log(a.clamp(min=1e-12)) + F.logsigmoid(sign * d))


def anneal_weight(t: int, center: float = 3500.0, width: float = 1000.0) -> float:
    """The authors' MLE -> contrastive schedule w(t) = (tanh((t − center)/width) + 1)/2."""
    return (math.tanh((t - center) / width) + 1.0) / 2.0


# -- 3. the objective --------------------------------------------------------------------
@dataclass
class GCLConfig:
    k: int = 3  # group size per side (<= the k the groups were selected with)
    loss: str = "paper"  # paper (Eq. 4) | code (ℓ(s, D) = −log(½(1 − s) + s σ(D)))
    sampling: str = "group"  # group: every pair of the group each step | draws: K random draws (code)
    draws: int = 6  # K (sampling=draws)
    anneal: bool = False  # code: (1 − w) NLL + w CL with w(t) = anneal_weight(t)
    anneal_center: float = 3500.0
    anneal_width: float = 1000.0
    mle_weight: float = 0.0  # without annealing: cl_weight * CL + mle_weight * NLL (0 = Eq. 4 alone)
    cl_weight: float = 1.0  # 0: the control, MLE fine-tuning alone on the same schedule (no group pairs run)
    init: str = "reference"  # reference (start from the MLE model) | scratch
    mle_warmup_steps: int = 0  # MLE-only steps before contrastive training (code: 5000 from scratch)
    # Ablations (GCL Table 5)
    group_wise: bool = True  # False: one positive (the original pair), one negative (the worst)
    positive_groups: bool = True  # False: the original pair is the only positive
    negative_groups: bool = True  # False: no negatives
    context_side: bool = True
    response_side: bool = True
    matching_scores: bool = True  # False: s = +1 for positives, −1 for negatives
    # D = log p_m − log p_n compares like with like only if the target is scored as the
    # cached reference was: without dropout (True: the old biased D, about −0.5 nats at step 0)
    score_dropout: bool = False
    seed: int = 1
    # Validation CL on a fixed, seeded subset of the valid examples' groups (0 = all): the
    # same examples at every validation, so checkpoints are compared pair by pair.
    valid_examples: int = 0

    def __post_init__(self):
        if self.loss not in ("paper", "code"):
            raise ValueError(f"gcl.loss {self.loss!r}: paper | code")
        if self.sampling not in ("group", "draws"):
            raise ValueError(f"gcl.sampling {self.sampling!r}: group | draws")
        if self.init not in ("reference", "scratch"):
            raise ValueError(f"gcl.init {self.init!r}: reference | scratch")
        if not (self.context_side or self.response_side):
            raise ValueError("gcl: context_side and response_side cannot both be off")
        if self.k < 1 or self.draws < 1:
            raise ValueError("gcl.k and gcl.draws must be >= 1")
        if self.mle_weight < 0 or self.mle_warmup_steps < 0 or self.anneal_width <= 0 or self.cl_weight < 0:
            raise ValueError("gcl.mle_weight, gcl.cl_weight and gcl.mle_warmup_steps must be >= 0, gcl.anneal_width > 0")
        if self.cl_weight == 0 and (self.anneal or self.mle_weight == 0):
            raise ValueError("gcl.cl_weight 0 (the MLE-only control) needs gcl.mle_weight > 0 and anneal false")

    @classmethod
    def from_params(cls, params: dict) -> GCLConfig:
        validate_params("gcl", params)  # unknown keys, types, ranges: params_schema's one-line errors
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(params) - known):
            raise InputError("params.yaml", f"gcl.{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")
        return cls(**{k: v for k, v in params.items() if k in known})

    @property
    def sides(self) -> tuple[str, ...]:
        return tuple(s for s, on in ((RESPONSE_SIDE, self.response_side), (CONTEXT_SIDE, self.context_side)) if on)


@dataclass
class Pair:
    context_row: int
    response_row: int
    s: float
    reference: float  # cached log p_n(r | c)
    positive: bool
    side: str


def group_pairs(group: dict, reference: dict, cfg: GCLConfig) -> tuple[list[Pair], list[Pair]]:
    """One example's positives and negatives as the trainer uses them: the first k of each
    enabled side (stored best-first / worst-first), then the ablations."""

    def pairs(kind: str, positive: bool) -> list[Pair]:
        return [Pair(c, r, float(s), float(ref), positive, side) for c, r, s, side, ref in zip(
            group[f"{kind}_context_rows"], group[f"{kind}_response_rows"], group[f"{kind}_scores"],
            group[f"{kind}_sides"], reference[f"{kind}_log_probs"], strict=True)]

    def first_k(ps: list[Pair]) -> list[Pair]:
        taken = {side: 0 for side in SIDES}
        out = []
        for p in ps:
            if p.side == ORIGINAL:
                out.append(p)
            elif p.side in cfg.sides and taken[p.side] < cfg.k:
                taken[p.side] += 1
                out.append(p)
        return out

    pos = first_k(pairs("positive", True))
    neg = first_k(pairs("negative", False))
    original = [p for p in pos if p.side == ORIGINAL]
    if not cfg.positive_groups:
        pos = original
    if not cfg.negative_groups:
        neg = []
    if not cfg.group_wise:
        pos = original
        neg = [min(neg, key=lambda p: p.s)] if neg else []  # min keeps the first of ties
    if not cfg.matching_scores:
        for p in pos:
            p.s = 1.0
        for p in neg:
            p.s = -1.0
    return pos, neg


def groups_dir(data_dir: str | Path, k: int | None = None) -> Path:
    """data/scored_groups: the DAG's groups, selected at params gcl.k; with ``k``,
    data/scored_groups_k<k>: a wider selection for GCL Figure 3's k above it (run by hand)."""
    return Path(data_dir) / ("scored_groups" if k is None else f"scored_groups_k{k}")


def reference_dir(data_dir: str | Path, run: str, seed: int, k: int | None = None) -> Path:
    """Where the reference ``run``'s scores of the groups of :func:`groups_dir` (same ``k``) live."""
    return Path(data_dir) / ("reference_scores" if k is None else f"reference_scores_k{k}") / run / f"seed{seed}"


def check_aligned(groups: pa.Table, reference: pa.Table, n_train: int, where: str) -> None:
    if groups.num_rows != n_train or reference.num_rows != n_train:
        raise InputError(where, f"{groups.num_rows} groups / {reference.num_rows} reference rows for "
                                f"{n_train} training examples")
    if groups.column("example_id").to_pylist() != reference.column("example_id").to_pylist():
        raise InputError(where, "reference scores not aligned with the scored groups (rerun reference_scores)")
    for kind in ("positive", "negative"):
        a = pc.list_value_length(groups.column(f"{kind}_scores"))
        b = pc.list_value_length(reference.column(f"{kind}_log_probs"))
        if not a.equals(b):
            raise InputError(where, f"{kind} pairs of groups and reference scores differ in number")


SCORE_CHUNK = 64  # pairs per length-sorted decoding chunk when scoring a step's pairs
SCORE_BLOCK = 512  # distinct contexts encoded at a time by score_pairs (bounds the states' memory)


def shares_contexts(model) -> bool:
    """Whether log p(r | c) may reuse one encoding of c across responses: the model scores
    with the interface's ``sequence_log_prob`` (encode, then teacher-forced decode)."""
    return getattr(type(unwrap(model)), "sequence_log_prob", None) is Generator.sequence_log_prob


def unwrap(model):
    return getattr(model, "module", model)  # DistributedDataParallel's wrapped model


def pair_batch(dataset: DialogueDataset, context_rows: list[int], response_rows: list[int]) -> Batch:
    """ONE padded batch of (context row, response row) pairs: every input of the context
    row (query, persona, congeneric contexts, ...) with the response of the response row."""
    ctx = dataset.collate(context_rows)
    resp = dataset.collate(response_rows)
    ctx.response, ctx.response_mask = resp.response, resp.response_mask
    return ctx


def score_pairs(model, dataset: DialogueDataset, context_rows, response_rows, device,
                chunk: int = SCORE_CHUNK, block: int | None = None, share: bool = True,
                desc: str | None = None) -> torch.Tensor:
    """Σ_t log p(r_t | c) of every (context row, response row) pair, float32 [N] in the pairs'
    order; gradients flow unless the caller turns them off.

    Where the model scores through the interface (encode, then teacher-forced decode) and
    reads its context only (eval mode: PostKS's posterior reads the response in training),
    each distinct context is encoded once, ``block`` distinct contexts at a time (None: all),
    and its state expanded to its pairs: 7 of an example's 13 group pairs share its context,
    and the candidates are training contexts themselves. The responses are teacher-forced in
    length-sorted chunks of ``chunk`` pairs, each padded to its own longest. Other models (or
    ``share=False``) score length-sorted pair batches. Same numbers either way up to float
    rounding (tested). ``desc``: a progress bar over the pairs."""
    ctx = np.asarray(context_rows, dtype=np.int64).reshape(-1)
    resp = np.asarray(response_rows, dtype=np.int64).reshape(-1)
    out = torch.empty(len(ctx), dtype=torch.float32, device=device)
    if not len(ctx):
        return out
    resp_len = np.asarray([len(dataset[int(r)].response) for r in resp])  # </s> included
    bar = progress(total=len(ctx), desc=desc, unit="pair", **({} if desc else {"disable": True}))
    if not share or model.training or not shares_contexts(model):
        qlen = np.asarray([len(dataset[int(c)].query) for c in ctx])
        order = np.lexsort((np.arange(len(ctx)), qlen + resp_len))
        for i in range(0, len(order), chunk):
            part = order[i:i + chunk]
            pb = pair_batch(dataset, ctx[part].tolist(), resp[part].tolist()).to(device)
            out[torch.as_tensor(part, device=device)] = model(pb, method="sequence_log_prob").float()
            bar.update(len(part))
        bar.close()
        return out
    distinct, inverse = np.unique(ctx, return_inverse=True)
    inverse = inverse.reshape(-1)
    block = block or len(distinct)
    for lo in range(0, len(distinct), block):
        rows = np.flatnonzero((inverse >= lo) & (inverse < lo + block))
        encoded = model(dataset.collate(distinct[lo:lo + block].tolist()).to(device), method="encode")
        order = rows[np.lexsort((rows, resp_len[rows]))]
        for i in range(0, len(order), chunk):
            part = order[i:i + chunk]
            pb = pair_batch(dataset, ctx[part].tolist(), resp[part].tolist()).to(device)
            state = unwrap(model).reorder_state(encoded, torch.as_tensor(inverse[part] - lo, device=device))
            out[torch.as_tensor(part, device=device)] = -model(pb, method="token_nll", state=state).sum(1).float()
            bar.update(len(part))
    bar.close()
    return out


def valid_subset(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted rows of a seeded subset of ``size`` of ``n`` valid examples (all when ``size``
    is 0 or >= n): the same rows at every validation of a run and in every run of a seed."""
    if size <= 0 or size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n]).choice(n, size=size, replace=False))


class GroupContrastive:
    """``objective(model, batch, epoch=, step=) -> dict`` for ``pipeline.train.train``."""

    def __init__(self, cfg: GCLConfig, groups: pa.Table, reference: pa.Table, dataset: DialogueDataset,
                 where: str = "data/reference_scores",
                 valid: tuple[pa.Table, pa.Table, DialogueDataset] | None = None, valid_batch: int = 32):
        """``valid``: the valid split's (groups, reference scores, dataset): then
        :meth:`validate` reports the validation contrastive loss ``cl`` (train.criterion
        cl_nll, the authors' checkpoint selection)."""
        check_aligned(groups, reference, len(dataset), where)
        self.cfg = cfg
        self.dataset = dataset
        self.groups = self._pairs(groups, reference)
        self.valid = None
        self.valid_batch = valid_batch
        if valid is not None:
            check_aligned(valid[0], valid[1], len(valid[2]), where.replace("train", "valid"))
            rows = valid_subset(valid[0].num_rows, cfg.valid_examples, cfg.seed)
            self.valid = (self._pairs(valid[0].take(rows), valid[1].take(rows)), valid[2])
        n_pos = sum(len(p) for p, _ in self.groups)
        n_neg = sum(len(n) for _, n in self.groups)
        dropped = (sum(1 for p, _ in self.groups for x in p if x.s <= 0),
                   sum(1 for _, n in self.groups for x in n if x.s > 0))
        log.info("GCL groups: %.2f positives and %.2f negatives per example (k=%d, sides %s)%s",
                 n_pos / max(len(self.groups), 1), n_neg / max(len(self.groups), 1), cfg.k, "+".join(cfg.sides),
                 f"; Eq. 4 drops {dropped[0]} positives with s <= 0 and {dropped[1]} negatives with s > 0"
                 if cfg.loss == "paper" else "")

    def _pairs(self, groups: pa.Table, reference: pa.Table) -> list[tuple[list[Pair], list[Pair]]]:
        return [group_pairs(g, r, self.cfg) for g, r in zip(groups.to_pylist(), reference.to_pylist(), strict=True)]

    # pairs of one step ------------------------------------------------------------------
    def _group_step(self, rows: list[int], groups=None) -> tuple[list[Pair], list[int], list[float]]:
        """Every pair of every group; weight = 1/(N |P_i|) or 1/(N |N_i|) (Eq. 4's means)."""
        groups = self.groups if groups is None else groups
        pairs, owner, weight = [], [], []
        n = len(rows)
        for b, row in enumerate(rows):
            pos, neg = groups[row]
            if self.cfg.loss == "paper":  # Eq. 4 is defined for s+ > 0 and s- <= 0 only
                pos = [p for p in pos if p.s > 0]
                neg = [p for p in neg if p.s <= 0]
            for part in (pos, neg):
                for p in part:
                    pairs.append(p)
                    owner.append(b)
                    weight.append(1.0 / (n * len(part)))
        return pairs, owner, weight

    def _draw_step(self, rows: list[int], step: int) -> tuple[list[Pair], list[int], list[float]]:
        """The authors' sampling: the original pair, plus K draws, each one candidate index
        shared by the batch on a side chosen by a coin flip; each term averaged over the
        examples that have that candidate, the K+1 terms averaged."""
        rng = np.random.default_rng([self.cfg.seed, step])
        per_side = []  # per example: side -> [best..., worst...]
        for row in rows:
            pos, neg = self.groups[row]
            if self.cfg.loss == "paper":  # Eq. 4 is defined for s+ > 0 and s- <= 0 only
                pos, neg = [p for p in pos if p.s > 0], [p for p in neg if p.s <= 0]
            per_side.append({side: [p for p in pos + neg if p.side == side] for side in self.cfg.sides})
        terms: list[list[tuple[int, Pair]]] = [[(b, self.groups[row][0][0]) for b, row in enumerate(rows)]]
        for _ in range(self.cfg.draws):
            side = self.cfg.sides[int(rng.integers(len(self.cfg.sides)))]
            width = max((len(ps[side]) for ps in per_side), default=0)
            if width == 0:
                continue
            j = int(rng.integers(width))
            terms.append([(b, ps[side][j]) for b, ps in enumerate(per_side) if j < len(ps[side])])
        pairs, owner, weight = [], [], []
        for term in terms:
            for b, p in term:
                pairs.append(p)
                owner.append(b)
                weight.append(1.0 / (len(terms) * len(term)))
        return pairs, owner, weight

    def step_pairs(self, rows: list[int], step: int) -> tuple[list[Pair], list[int], list[float]]:
        if self.cfg.sampling == "draws":
            return self._draw_step(rows, step)
        return self._group_step(rows)

    # the hook ---------------------------------------------------------------------------
    def contrastive_loss(self, d: torch.Tensor, s: torch.Tensor, positive: torch.Tensor,
                         weight: torch.Tensor) -> torch.Tensor:
        terms = paper_terms(d, s, positive) if self.cfg.loss == "paper" else code_terms(d, s)
        return (terms * weight).sum()

    def _log_p(self, model, dataset: DialogueDataset, context_rows: list[int], response_rows: list[int],
               device) -> torch.Tensor:
        """log p_m(r | c) of every pair (score_pairs), with dropout off unless ``score_dropout``
        (the cached reference was scored in eval mode); gradients flow either way."""
        was = model.training
        if not self.cfg.score_dropout:
            model.eval()
        try:
            return score_pairs(model, dataset, context_rows, response_rows, device)
        finally:
            model.train(was)

    def _cl(self, model, pairs: list[Pair], weight: list[float], dataset: DialogueDataset,
            device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """(Eq. 4 over the pairs, their D, which are positives, their target tokens)."""
        response_rows = [p.response_row for p in pairs]
        f32 = dict(dtype=torch.float32, device=device)
        log_p = self._log_p(model, dataset, [p.context_row for p in pairs], response_rows, device)
        d = log_p - torch.tensor([p.reference for p in pairs], **f32)
        s = torch.tensor([p.s for p in pairs], **f32)
        positive = torch.tensor([p.positive for p in pairs], device=device)
        tokens = sum(len(dataset[r].response) for r in response_rows)  # </s> included
        return self.contrastive_loss(d, s, positive, torch.tensor(weight, **f32)), d, positive, tokens

    def __call__(self, model, batch: Batch, epoch: int = 0, step: int = 0, **ctx) -> dict:
        cfg = self.cfg
        if step < cfg.mle_warmup_steps or cfg.cl_weight == 0:  # warm-up, or the MLE-only control
            out = model(batch, method="loss", epoch=epoch, step=step)
            return {**out, "loss": cfg.mle_weight * out["loss"]} if cfg.cl_weight == 0 else out
        rows = batch.index.tolist()
        pairs, _, weight = self.step_pairs(rows, step - cfg.mle_warmup_steps)
        cl, d, positive, tokens = self._cl(model, pairs, weight, self.dataset, batch.response.device)
        out = {"cl_loss": cl.detach(), "target_tokens": torch.tensor(tokens),
               "d_positive": d[positive].mean().detach() if bool(positive.any()) else d.new_zeros(()),
               "n_pairs": torch.tensor(len(pairs))}
        w = anneal_weight(step - cfg.mle_warmup_steps, cfg.anneal_center, cfg.anneal_width) if cfg.anneal else None
        if w is not None or cfg.mle_weight:
            mle = model(batch, method="loss", epoch=epoch, step=step)["loss"]
            out["mle_loss"] = mle.detach()
            out["loss"] = (1 - w) * mle + w * cl if w is not None else cfg.cl_weight * cl + cfg.mle_weight * mle
        else:
            out["loss"] = cl
        return out

    @torch.no_grad()
    def valid_pairs(self, model, device, precision: str = "auto"):
        """Every valid group pair, scored in eval mode, batch by batch: yields (rows in the
        batch, Eq. 4 averaged over them, the pairs, their D as a numpy array)."""
        from pipeline.train import autocast  # the loop's module imports this one

        groups, dataset = self.valid
        was = model.training
        model.eval()
        try:
            for lo in range(0, len(groups), self.valid_batch):
                rows = list(range(lo, min(lo + self.valid_batch, len(groups))))
                pairs, _, weight = self._group_step(rows, groups)
                if not pairs:
                    continue
                with autocast(torch.device(device), precision):
                    cl, d, _, _ = self._cl(model, pairs, weight, dataset, device)
                yield len(rows), float(cl), pairs, d.float().cpu().numpy()
        finally:
            model.train(was)

    def validate(self, model, device, precision: str = "auto") -> dict[str, float]:
        """The contrastive loss on the valid groups (every group pair, eval mode), averaged
        over valid examples as Eq. 4 averages over a batch: {"cl": ..., "d_positive": ...}."""
        if self.valid is None:
            return {}
        total, d_pos, n_pos = 0.0, 0.0, 0
        for n_rows, cl, pairs, d in self.valid_pairs(model, device, precision):
            positive = np.array([p.positive for p in pairs])
            total += cl * n_rows  # the weights average over the rows of this batch
            d_pos += float(d[positive].sum())
            n_pos += int(positive.sum())
        return {"cl": total / max(len(self.valid[0]), 1), "d_positive": d_pos / max(n_pos, 1)}

    def separation(self, model, device, precision: str = "auto") -> dict:
        """How far the target's D = log p_m(r | c) − log p_n(r | c) tells the valid positives
        from the negatives. Eq. 4 is convex in D, so a fine-tune whose D spreads more than
        it separates raises the valid CL even when D moves the right way on average.
        {"cl", "auc": ROC AUC of D, positives against negatives (0.5: none), and per
        "<positive|negative>_<side>": pairs, mean and sd of D, share with D > 0}."""
        from sklearn.metrics import roc_auc_score

        if self.valid is None:
            raise ValueError("separation needs the valid groups")
        total, cells, labels, ds = 0.0, {}, [], []
        for n_rows, cl, pairs, d in self.valid_pairs(model, device, precision):
            total += cl * n_rows
            for p, x in zip(pairs, d.tolist(), strict=True):
                cells.setdefault(f"{'positive' if p.positive else 'negative'}_{p.side}", []).append(x)
                labels.append(p.positive)
                ds.append(x)
        out: dict = {"cl": total / max(len(self.valid[0]), 1),
                     "auc": float(roc_auc_score(labels, ds)) if 0 < sum(labels) < len(labels) else None}
        for name, xs in sorted(cells.items()):
            x = np.asarray(xs)
            out[name] = {"pairs": len(x), "mean_d": float(x.mean()), "sd_d": float(x.std()),
                         "share_d_gt_0": float((x > 0).mean())}
        return out


# -- the cached reference ----------------------------------------------------------------
@torch.no_grad()
def reference_log_probs(model, dataset: DialogueDataset, groups: pa.Table, batch_size: int = 256,
                        device: torch.device | str = "cpu") -> pa.Table:
    """log p_n(r | c) of the frozen reference (eval mode: no dropout) for every pair of
    every group, as schema.REFERENCE_SCORES rows aligned with ``groups`` (score_pairs: each
    distinct context encoded once, responses in length-sorted batches of ``batch_size``); the
    order is fixed, so the output is deterministic."""
    if groups.num_rows != len(dataset):
        raise InputError("data/scored_groups/train.parquet",
                         f"{groups.num_rows} groups for {len(dataset)} training examples")
    model.eval()
    cols = groups.to_pydict()
    ctx, resp, slots = [], [], []  # slots: (row, kind, position)
    for row in range(groups.num_rows):
        for kind in ("positive", "negative"):
            for pos, (c, r) in enumerate(zip(cols[f"{kind}_context_rows"][row], cols[f"{kind}_response_rows"][row],
                                             strict=True)):
                ctx.append(c)
                resp.append(r)
                slots.append((row, kind, pos))
    n_ex = len(dataset)
    values = score_pairs(model, dataset, ctx, resp, device, chunk=batch_size, block=SCORE_BLOCK,
                         desc="reference log p").cpu().numpy()
    out = {"positive": [[] for _ in range(n_ex)], "negative": [[] for _ in range(n_ex)]}
    for (row, kind, _), v in zip(slots, values, strict=True):
        out[kind][row].append(float(v))
    return pa.Table.from_pydict({"example_id": cols["example_id"], "positive_log_probs": out["positive"],
                                 "negative_log_probs": out["negative"]}, schema=REFERENCE_SCORES)
