"""One decoder for every generator: batched greedy and beam search over the model hooks
``encode`` / ``decode_step`` / ``reorder_state`` / ``selected_persona``.

Both stop a hypothesis at ``</s>`` (later positions are ``<pad>``) and never emit
``<pad>`` or ``<s>``. Beam search with ``beam_size=1`` is greedy search. With
``length_penalty`` α > 0 finished hypotheses are ranked by score / length^α (α = 1: mean
token log-prob); α = 0 ranks by the summed log-prob.

Also the collapse diagnostic :func:`query_log_probs`: the reference's per-token log-prob
given its own context and given another example's (its mean difference is ``query_gain``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.dataset import Batch, DialogueDataset, Example, collate, sorted_batches
from pipeline.io import progress
from pipeline.models import Generator


@dataclass
class Decoded:
    tokens: torch.Tensor  # [B, T] ids, </s> then <pad> after the end
    scores: torch.Tensor  # [B] summed log-prob of the chosen hypothesis
    selected_persona: torch.Tensor | None  # [B], -1 = none selected; None = the model never selects


def _ban(log_probs: torch.Tensor, model: Generator) -> torch.Tensor:
    log_probs = log_probs.clone()
    log_probs[:, model.pad] = -torch.inf
    log_probs[:, model.bos] = -torch.inf
    return log_probs


@torch.no_grad()
def greedy(model: Generator, batch: Batch, max_len: int = 30) -> Decoded:
    state = model.encode(batch)
    selected = model.selected_persona(state)
    b = batch.size
    device = batch.query.device
    prev = torch.full((b,), model.bos, dtype=torch.long, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    scores = torch.zeros(b, device=device)
    out = []
    for _ in range(max_len):
        log_probs, state = model.decode_step(state, prev)
        log_probs = _ban(log_probs, model)
        best, tok = log_probs.max(-1)
        tok = tok.masked_fill(finished, model.pad)
        scores += best.masked_fill(finished, 0.0)
        out.append(tok)
        finished |= tok == model.eos
        prev = tok
        if bool(finished.all()):
            break
    return Decoded(torch.stack(out, 1), scores, selected)


@torch.no_grad()
def beam_search(model: Generator, batch: Batch, beam_size: int = 5, max_len: int = 30,
                length_penalty: float = 0.0) -> Decoded:
    k, b = beam_size, batch.size
    device = batch.query.device
    state = model.encode(batch)
    selected = model.selected_persona(state)
    state = model.reorder_state(state, torch.arange(b, device=device).repeat_interleave(k))
    scores = torch.zeros(b, k, device=device)
    scores[:, 1:] = -torch.inf  # all beams start identical: expand only the first
    tokens = torch.zeros(b * k, 0, dtype=torch.long, device=device)
    finished = torch.zeros(b * k, dtype=torch.bool, device=device)
    lengths = torch.zeros(b * k, device=device)
    prev = torch.full((b * k,), model.bos, dtype=torch.long, device=device)
    offsets = (torch.arange(b, device=device) * k).unsqueeze(1)
    for _ in range(max_len):
        log_probs, state = model.decode_step(state, prev)
        log_probs = _ban(log_probs, model)
        v = log_probs.shape[-1]
        # A finished hypothesis continues only with <pad>, at no cost, keeping its score.
        done_row = torch.full((v,), -torch.inf, device=device)
        done_row[model.pad] = 0.0
        log_probs = torch.where(finished.unsqueeze(1), done_row, log_probs)
        cand = (scores.view(-1, 1) + log_probs).view(b, k * v)
        scores, idx = cand.topk(k, dim=1)
        origin = (offsets + idx // v).view(-1)
        tok = (idx % v).view(-1)
        state = model.reorder_state(state, origin)
        tokens = torch.cat([tokens.index_select(0, origin), tok.unsqueeze(1)], 1)
        finished = finished.index_select(0, origin)
        lengths = lengths.index_select(0, origin) + (~finished).float()
        finished = finished | (tok == model.eos)
        prev = tok
        if bool(finished.all()):
            break
    rank = scores / lengths.view(b, k).clamp(min=1) ** length_penalty if length_penalty else scores
    best = rank.argmax(1)
    pick = offsets.squeeze(1) + best
    return Decoded(tokens.index_select(0, pick), scores.gather(1, best.unsqueeze(1)).squeeze(1), selected)


def decode(model: Generator, batch: Batch, method: str = "greedy", beam_size: int = 5, max_len: int = 30,
           length_penalty: float = 0.0) -> Decoded:
    if method == "greedy":
        return greedy(model, batch, max_len)
    if method == "beam":
        return beam_search(model, batch, beam_size, max_len, length_penalty)
    raise ValueError(f"decoding method {method!r}: greedy | beam")


def generate_rows(model: Generator, dataset: DialogueDataset, *, method: str = "greedy", beam_size: int = 5,
                  max_len: int = 30, length_penalty: float = 0.0, batch_size: int = 64,
                  device: torch.device | str = "cpu") -> list[dict]:
    """One ``schema.GENERATIONS`` row per example of ``dataset``, in dataset order."""
    model.eval()
    texts = dataset.texts
    rows: list[dict] = [{}] * len(dataset)
    for index in progress(sorted_batches(dataset.lengths(), batch_size), desc="decoding"):
        batch = dataset.collate(index).to(device)
        out = decode(model, batch, method, beam_size, max_len, length_penalty)
        sel = out.selected_persona.tolist() if out.selected_persona is not None else [None] * len(index)
        for j, i in enumerate(index):
            n_persona = len(texts["persona"][i])
            s = sel[j]
            rows[i] = {
                "example_id": texts["example_id"][i],
                "persona": list(texts["persona"][i]),
                "context": texts["query"][i],
                "reference": texts["response"][i],
                "hypothesis": dataset.vocab.decode(out.tokens[j]),
                "selected_persona": s if s is not None and 0 <= s < n_persona else None,
            }
    return rows


# ---------------------------------------------------------------- collapse diagnostic

QUERY_SHUFFLE_SEED = 1  # params `generate.query_shuffle_seed` (the default when absent)
# The context side of an Example: the query and what is derived from it (PMI specific
# words, congeneric contexts: own X~ first). Persona, its label and the response stay.
CONTEXT_FIELDS = ("query", "specific_words", "congeneric")


def derangement(n: int, seed: int = QUERY_SHUFFLE_SEED) -> np.ndarray:
    """[n] int64 ``partner`` with ``partner[i] != i`` for every i: a seeded permutation π,
    each π[j] paired with π[j + 1] (cyclic), so every row lends its context exactly once.
    Depends only on ``n`` and ``seed``: every model meets the same pairing."""
    if n < 2:
        raise ValueError(f"a shuffled context needs at least two examples, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, dtype=np.int64)
    partner[perm] = np.roll(perm, -1)
    return partner


def with_context_of(example: Example, other: Example) -> Example:
    """``example`` with the context side (CONTEXT_FIELDS) of ``other``."""
    return dataclasses.replace(example, **{f: getattr(other, f) for f in CONTEXT_FIELDS})


def shuffled_batch(dataset: DialogueDataset, index: list[int], partner: np.ndarray) -> Batch:
    """``dataset.collate(index)`` with each row's context side taken from row ``partner[row]``."""
    examples = [with_context_of(dataset[i], dataset[int(partner[i])]) for i in index]
    return collate(examples, index, dataset.vocab.pad, dataset.config.inputs)


@torch.no_grad()
def query_log_probs(model: Generator, dataset: DialogueDataset, batch_size: int = 64,
                    device: torch.device | str = "cpu", seed: int = QUERY_SHUFFLE_SEED,
                    partner: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(own, shuffled): per example of ``dataset`` (in order), the gold response's
    teacher-forced Σ_t log p(y_t | ·) divided by its token count (``</s>`` included), given
    its own context c and given c′ = the context side of row ``partner[i]``
    (default: ``derangement(len(dataset), seed)``). float64 [N] each.

    Eval mode (restored afterwards), no grad; run it under the decoding precision (the
    caller's autocast). ``mean(own − shuffled)`` is the model's ``query_gain``: about 0 for
    a model whose replies do not depend on the context."""
    n = len(dataset)
    if partner is None:
        partner = derangement(n, seed)
    partner = np.asarray(partner, dtype=np.int64)
    if partner.shape != (n,) or (n and (partner.min() < 0 or partner.max() >= n)):
        raise ValueError(f"partner must be [{n}] row positions 0..{n - 1}")
    was_training = model.training
    model.eval()
    own = np.zeros(n, dtype=np.float64)
    shuffled = np.zeros(n, dtype=np.float64)
    try:
        for index in progress(sorted_batches(dataset.lengths(), batch_size), desc="query log-probs"):
            batch = dataset.collate(index).to(device)
            other = shuffled_batch(dataset, index, partner).to(device)
            n_tokens = batch.response_mask.sum(1).clamp(min=1).double()
            own[index] = (model(batch, method="sequence_log_prob").double() / n_tokens).cpu().numpy()
            shuffled[index] = (model(other, method="sequence_log_prob").double() / n_tokens).cpu().numpy()
    finally:
        model.train(was_training)
    return own, shuffled
