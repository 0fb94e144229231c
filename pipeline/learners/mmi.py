"""Maximum mutual information decoding (Li et al. 2016a, "A Diversity-Promoting Objective
Function for Neural Conversation Models"; GCL Table 3's MMI row), both forms:

- **MMI-antiLM**: T̂ = argmax_T log p(T | S) − λ log U(T) + γ_len |T|, with
  U(T) = Π_k p_LM(t_k | t_<k) · g(k), g(k) = 1 for k ≤ ``threshold`` (the paper's γ) and 0
  after: the language-model penalty only on the first tokens, where generic replies are
  decided (later tokens keep the forward model's grammar). Decoded directly: :class:`AntiLM`
  presents the combined per-token score as a model to the shared decoder
  (``pipeline.decode``: greedy or beam search).
- **MMI-bidi**: an N-best list from p(T | S) (:func:`nbest`), reranked by
  log p(T | S) + λ log p(S | T) + γ |T| (:func:`bidi_scores`), p(S | T) the backward
  Seq2Seq (pipeline/models/seq2seq_backward.py). :class:`Bidi` replays each example's
  reranked choice through the shared decoder, so the generate stage's rows, precision and
  diagnostics are those of every other run.

The N-best list is built as Li's code builds it (jiweil/Neural-Dialogue-Generation,
Decode/decode_model.lua): a beam of ``n_best`` runs for ``max_len`` steps with no early stop,
every hypothesis that ends among the beam's candidates goes to the pool, and the list is the
pool's ``n_best`` best by forward log-prob per token (Li: divided by length + 1). The first
version stopped once ``n`` hypotheses had ended: those are the short generic ones ("do you
have any pets ?" for 30-40% of the test turns), which no λ could then rerank away.

``nbest: sample`` (not the paper's; Li et al.'s own follow-up, "A simple, fast diverse
decoding algorithm", and the audit's probe) fills each list with ``n_best`` replies sampled
from p(T | S) (``top_k`` likeliest tokens per step, seeded by ``sample_seed`` and the batch's
first row), duplicates dropped: a beam's list is near-identical generic replies for most
contexts, and no reranking can choose what the list does not hold.

|T| counts the reply's words (``</s>`` excluded). λ and γ are tuned as the paper tunes them,
on validation BLEU (:func:`tune`: a grid over ``lam_grid`` × ``length_grid`` on a seeded
subset of the valid split, the criterion the mean of BLEU-1..4: the paper's MERT on BLEU is
a search over the same two weights); ``tune: false`` takes ``lam`` / ``length_weight`` as
given. The paper's list is 200; ``n_best`` is a param for the CPU budget. The combined models
never train.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pipeline.dataset import Batch
from pipeline.models import Generator, State
from pipeline.params_schema import config_from

MODES = ("bidi", "antilm")
NBEST = ("beam", "sample")


@dataclass
class MMIConfig:
    mode: str = "bidi"  # bidi (N-best reranked with the backward model) | antilm (decode with the LM penalty)
    lam: float = 0.5  # λ: weight of log p(S | T) (bidi) or of the LM penalty (antilm)
    length_weight: float = 0.5  # γ: reward per reply word
    threshold: int = 5  # antilm: the penalty covers the first `threshold` tokens (the paper's γ of g(k))
    n_best: int = 10  # bidi: hypotheses per example (also the beam width)
    nbest: str = "beam"  # bidi: how the list is built: beam (the paper) | sample (n_best samples, duplicates dropped)
    top_k: int = 0  # nbest sample: each step samples among the k likeliest tokens (0: all)
    sample_seed: int = 1
    tune: bool = False  # bidi: choose lam and length_weight on validation BLEU (grid below)
    tune_examples: int = 500  # bidi: the seeded valid subset the grid is scored on
    lam_grid: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 1.0)
    length_grid: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mmi.mode {self.mode!r}: one of {MODES}")
        if self.nbest not in NBEST:
            raise ValueError(f"mmi.nbest {self.nbest!r}: one of {NBEST}")
        if self.n_best < 1 or self.threshold < 0 or self.tune_examples < 1 or self.top_k < 0:
            raise ValueError("mmi.n_best and mmi.tune_examples must be >= 1, mmi.threshold and mmi.top_k >= 0")
        self.lam_grid, self.length_grid = tuple(self.lam_grid), tuple(self.length_grid)
        if self.tune and not (self.lam_grid and self.length_grid):
            raise ValueError("mmi.lam_grid and mmi.length_grid must be non-empty to tune")

    @classmethod
    def from_params(cls, params: dict) -> MMIConfig:
        return config_from(cls, "mmi", params)


def _prefixed(state: State, prefix: str) -> State:
    return {f"{prefix}{k}": v for k, v in state.items()}


def _part(state: State, prefix: str) -> State:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


class AntiLM(nn.Module):
    """log p(t_k | t_<k, S) − λ g(k) log p_LM(t_k | t_<k) + γ_len as one "model" for
    ``pipeline.decode`` (its ``scores`` are then the MMI-antiLM score, not a log-prob).
    The length reward is paid by every token, ``</s>`` too: the same order as γ |T|."""

    def __init__(self, forward: Generator, lm: Generator, lam: float, threshold: int, length_weight: float = 0.0):
        super().__init__()
        self.forward_model, self.lm = forward, lm
        self.lam, self.threshold, self.length_weight = lam, threshold, length_weight
        self.pad, self.bos, self.eos = forward.pad, forward.bos, forward.eos

    def encode(self, batch: Batch) -> State:
        state = {**_prefixed(self.forward_model.encode(batch), "f."), **_prefixed(self.lm.encode(batch), "l.")}
        return {**state, "k": torch.zeros(batch.size, dtype=torch.long, device=batch.query.device)}

    def selected_persona(self, state: State) -> None:
        return None

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        return {k: v.index_select(0, index) for k, v in state.items()}

    def decode_step(self, state: State, prev_tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        log_p, f_state = self.forward_model.decode_step(_part(state, "f."), prev_tokens)
        log_lm, l_state = self.lm.decode_step(_part(state, "l."), prev_tokens)
        g = (state["k"] < self.threshold).float().unsqueeze(1)  # k counts tokens before this one
        scores = log_p - self.lam * g * log_lm + self.length_weight
        return scores, {**_prefixed(f_state, "f."), **_prefixed(l_state, "l."), "k": state["k"] + 1}


@torch.no_grad()
def nbest(model: Generator, batch: Batch, n: int = 10, max_len: int = 30) -> list[list[tuple[list[int], float]]]:
    """Per example up to ``n`` hypotheses (token ids, ``</s>`` included) with their summed
    log p(T | S), best first by log-prob per token (sum / (length + 1), Li's normalisation).
    A beam of n live hypotheses runs all ``max_len`` steps; every candidate ending in ``</s>``
    among the beam's top 2n goes to the example's pool (not to the beam), so the pool holds
    replies of every length; live hypotheses at ``max_len`` join it unfinished."""
    b, device = batch.size, batch.query.device
    state = model.reorder_state(model.encode(batch), torch.arange(b, device=device).repeat_interleave(n))
    scores = torch.full((b, n), -torch.inf, device=device)
    scores[:, 0] = 0.0
    seqs = torch.zeros(b * n, 0, dtype=torch.long, device=device)
    prev = torch.full((b * n,), model.bos, dtype=torch.long, device=device)
    pools: list[list[tuple[list[int], float]]] = [[] for _ in range(b)]
    for _ in range(max_len):
        log_p, state = model.decode_step(state, prev)
        log_p = log_p.float().clone()
        log_p[:, [model.pad, model.bos]] = -torch.inf
        v = log_p.shape[-1]
        top, idx = (scores.view(-1, 1) + log_p).view(b, n * v).topk(min(2 * n, n * v), dim=1)
        tok, beam = idx % v, idx // v
        keep = torch.zeros(b, n, dtype=torch.long, device=device)
        keep_scores = torch.full((b, n), -torch.inf, device=device)
        for i, (t_row, b_row, s_row) in enumerate(zip(tok.tolist(), beam.tolist(), top.tolist(), strict=True)):
            live = 0
            for t, beam_j, s in zip(t_row, b_row, s_row, strict=True):
                if s == -torch.inf:
                    break
                if t == model.eos:
                    pools[i].append(([*seqs[i * n + beam_j].tolist(), t], s))
                elif live < n:
                    keep[i, live], keep_scores[i, live] = t * n + beam_j, s  # token and beam, packed
                    live += 1
        origin = (torch.arange(b, device=device).unsqueeze(1) * n + keep % n).view(-1)
        prev = (keep // n).view(-1)
        state = model.reorder_state(state, origin)
        seqs = torch.cat([seqs.index_select(0, origin), prev.unsqueeze(1)], 1)
        scores = keep_scores
        if bool((scores == -torch.inf).all()):
            break
    for i, pool in enumerate(pools):
        pool.extend((seqs[i * n + j].tolist(), float(scores[i, j])) for j in range(n) if scores[i, j] > -torch.inf)
        pool.sort(key=lambda h: -h[1] / (len(h[0]) + 1))
        del pool[n:]
    return pools


@torch.no_grad()
def sampled_nbest(model: Generator, batch: Batch, n: int, max_len: int = 30, top_k: int = 0,
                  seed: int = 1) -> list[list[tuple[list[int], float]]]:
    """Per example its distinct replies among ``n`` samples of p(T | S) (token ids, ``</s>``
    included where the reply ended), with their summed log p(T | S), best first as
    :func:`nbest` orders them. Seeded by ``seed`` and the batch's first row."""
    from pipeline.learners.rl import sample_replies

    first = int(batch.index[0]) if batch.size else 0
    g = torch.Generator().manual_seed(seed * 1_000_003 + first)
    replies, scores = sample_replies(model, batch, max_len, generator=g, top_k=top_k, repeat=n, log_probs=True)
    scores = scores.tolist()
    pools: list[list[tuple[list[int], float]]] = [[] for _ in range(batch.size)]
    seen: list[set] = [set() for _ in range(batch.size)]
    for j, (reply, score) in enumerate(zip(replies.tolist(), scores, strict=True)):
        ids = tuple(t for t in reply if t != model.pad)
        i = j // n
        if ids and ids not in seen[i]:
            seen[i].add(ids)
            pools[i].append((list(ids), score))
    for pool in pools:
        pool.sort(key=lambda h: -h[1] / (len(h[0]) + 1))
    return pools


def bidi_scores(forward: torch.Tensor, backward: torch.Tensor, lengths: torch.Tensor, lam: float,
                length_weight: float) -> torch.Tensor:
    """MMI-bidi's reranking score log p(T | S) + λ log p(S | T) + γ |T| (any shape)."""
    return forward + lam * backward + length_weight * lengths


@dataclass
class NBest:
    """N-best lists flattened: hypothesis ``j`` belongs to example ``rows[j]`` and has
    forward log p(T | S), backward log p(S | T) and its length in words."""

    rows: list[int]
    hyps: list[list[int]]
    forward: torch.Tensor
    backward: torch.Tensor
    lengths: torch.Tensor

    def best(self, size: int, lam: float, length_weight: float) -> list[list[int]]:
        """Each example's hypothesis of highest ``bidi_scores`` (ties: the earlier, i.e. the better forward)."""
        total = bidi_scores(self.forward, self.backward, self.lengths, lam, length_weight).tolist()
        best: dict[int, tuple[float, list[int]]] = {}
        for r, h, s in zip(self.rows, self.hyps, total, strict=True):
            if r not in best or s > best[r][0]:
                best[r] = (s, h)
        return [best[i][1] for i in range(size)]


def reply_stats(references: Sequence[str], replies: list[str]) -> dict:
    """What the tuning grid records per choice: BLEU (mean of 1..4 and each), Dist-2, degeneracy."""
    from pipeline.evaluation.metrics import bleu_metrics, degeneracy, distinct

    bleu = bleu_metrics(list(references), replies)
    return {"bleu": sum(bleu.values()) / 4, **bleu, "distinct_2": distinct([r.split() for r in replies], 2),
            **degeneracy(replies)}


def tune(bidi: Bidi, batches: Iterable[Batch], references: Sequence[str], decode: Callable[[list[int]], str]
         ) -> tuple[float, float, list[dict]]:
    """λ and γ of highest validation BLEU (the mean of BLEU-1..4, pipeline.evaluation.metrics)
    over ``bidi.cfg``'s grids: the N-best lists are built and scored once, then every grid
    point only reranks them. ``batches`` cover the examples of ``references`` in order.
    Returns (λ, γ, every grid point with its BLEU, Dist-2 and top reply share)."""
    lists = [(batch.size, bidi.lists(batch)) for batch in batches]
    table = []
    for lam in bidi.cfg.lam_grid:
        for gamma in bidi.cfg.length_grid:
            replies = [decode(h) for size, nb in lists for h in nb.best(size, lam, gamma)]
            table.append({"lam": lam, "length_weight": gamma, **reply_stats(references, replies)})
    best = max(table, key=lambda row: (row["bleu"], -row["lam"], -row["length_weight"]))  # ties: the smaller knobs
    return best["lam"], best["length_weight"], table


def hypotheses_batch(batch: Batch, rows: list[int], hyps: list[list[int]], pad: int) -> Batch:
    """``batch``'s rows ``rows`` (contexts and all) with the responses ``hyps``."""
    sel = batch.select(torch.tensor(rows, dtype=torch.long))
    width = max([1, *(len(h) for h in hyps)])
    response = torch.full((len(hyps), width), pad, dtype=torch.long)
    for i, h in enumerate(hyps):
        response[i, : len(h)] = torch.tensor(h, dtype=torch.long)
    response = response.to(batch.response.device)
    return dataclasses.replace(sel, response=response, response_mask=response != pad)


class Bidi(nn.Module):
    """MMI-bidi as a "model" for ``pipeline.decode.greedy``: ``encode`` builds each example's
    N-best list, scores it with the backward model and keeps the best reranked hypothesis;
    ``decode_step`` then allows only that hypothesis' next token (score 0, the rest −inf),
    so greedy decoding returns exactly the reranked choice."""

    def __init__(self, forward: Generator, backward: Generator, cfg: MMIConfig, max_len: int = 30):
        super().__init__()
        self.forward_model, self.backward = forward, backward
        self.cfg, self.max_len = cfg, max_len
        self.pad, self.bos, self.eos = forward.pad, forward.bos, forward.eos

    @torch.no_grad()
    def lists(self, batch: Batch) -> NBest:
        """Each example's N-best list with its three reranking terms."""
        if self.cfg.nbest == "sample":
            pools = sampled_nbest(self.forward_model, batch, self.cfg.n_best, self.max_len, self.cfg.top_k,
                                  self.cfg.sample_seed)
        else:
            pools = nbest(self.forward_model, batch, self.cfg.n_best, self.max_len)
        rows = [i for i, pool in enumerate(pools) for _ in pool]
        hyps = [h for pool in pools for h, _ in pool]
        fwd = torch.tensor([s for pool in pools for _, s in pool])
        bwd = self.backward(hypotheses_batch(batch, rows, hyps, self.pad), method="sequence_log_prob").float().cpu()
        lengths = torch.tensor([float(len([t for t in h if t != self.eos])) for h in hyps])
        return NBest(rows, hyps, fwd, bwd, lengths)

    def choose(self, batch: Batch) -> list[list[int]]:
        return self.lists(batch).best(batch.size, self.cfg.lam, self.cfg.length_weight)

    def encode(self, batch: Batch) -> State:
        chosen = self.choose(batch)
        width = max([1, *(len(h) for h in chosen)])
        ids = torch.full((batch.size, width + 1), self.eos, dtype=torch.long)  # </s> after the end
        for i, h in enumerate(chosen):
            ids[i, : len(h)] = torch.tensor(h, dtype=torch.long)
        return {"chosen": ids.to(batch.query.device), "k": torch.zeros(batch.size, dtype=torch.long,
                                                                       device=batch.query.device)}

    def selected_persona(self, state: State) -> None:
        return None

    def reorder_state(self, state: State, index: torch.Tensor) -> State:
        return {k: v.index_select(0, index) for k, v in state.items()}

    def decode_step(self, state: State, prev_tokens: torch.Tensor) -> tuple[torch.Tensor, State]:
        chosen, k = state["chosen"], state["k"]
        tok = chosen.gather(1, k.clamp(max=chosen.shape[1] - 1).unsqueeze(1))
        scores = torch.full((chosen.shape[0], self.forward_model.vocab_size), -torch.inf, device=chosen.device)
        scores.scatter_(1, tok, 0.0)
        return scores, {"chosen": chosen, "k": k + 1}
