"""Specific words of a query by PMI with the persona (PEDNet, methods §2).

For a training example with context words W_x (the query X) and persona words W_p (all
persona sentences), statistics count *examples*:

    P(wp | wx) = #(wx in X and wp in P) / #(wx in X),   P(wp) = #(wp in P) / N
    PMI(wp, wx) = ln P(wp | wx) / P(wp)
    PMI(wx, P)  = sum over wp in W_p of PMI(wp, wx)

A pair never seen together in the statistics contributes 0 to the sum (its PMI is -inf,
which would make the sum meaningless). Context words kept: PMI(wx, P) >= threshold, at most
``max_words``, highest first, ties by word.

Statistics for a training example (``statistics``):

- ``all``: every training example, the example's own dialogue included. Every turn of a
  dialogue shares one persona, so a context word seen only in that dialogue gets
  P(wp | wx) = 1 for each of the persona's rare words, and the example itself makes every
  one of its pairs seen: training scores come out far higher than valid/test ones.
- ``leave_dialogue_out``: every training example *except those of its own dialogue*
  (N, #wx, #wp and #(wx, wp) each minus that dialogue's share), so a training example is
  scored as a valid/test one is, from dialogues it is not part of; a context word whose
  remaining count is below ``min_count`` is skipped.

- ``transductive``: the statistics count every split's *inputs* (query and persona, never a
  response), each example included in its own statistics, and every split is scored from
  them alike. This is what the PEDNet authors' released files show: with log10 PMI,
  min_count 1 and at most 4 words it gives 89.5% of Persona-Chat valid turns a specific
  word, 2.45 per turn, and agrees with the authors' marked words at F1 0.905
  (reports/pmi_calibration.json, ``python -m pipeline.preprocessing.pmi_calibration``). Scored from
  training statistics only, valid/test words unseen in the (here small) training split get
  no score at all, and coverage halves.

With the first three, valid/test examples are scored from all training examples.

``log_base`` is the logarithm's base: the threshold is in those units (the paper's 3.5
with log10, as the authors' coverage shows; ``e`` and ``2`` let far more words pass).

Everything is counted with sparse incidence matrices (examples x words): the co-occurrence
counts are X^T P, and an example's scores are looked up pair by pair with ``searchsorted``
on sorted integer keys (the dialogue shares too), so the cost is the number of (wx, wp)
pairs in the examples.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from pipeline.preprocessing.text import content_words
from pipeline.schema import KEY, PMI, SPECIALS

log = logging.getLogger(__name__)

_SPECIALS = frozenset(SPECIALS)
_CHUNK = 8192  # examples per scoring block: bounds the (wx, wp) pair arrays


def _words(text: str) -> set[str]:
    """Content words of one normalised string: no stop words, punctuation or specials."""
    return {w for w in content_words(text) if w not in _SPECIALS and any(c.isalnum() for c in w)}


def context_words(query: str) -> set[str]:
    return _words(query)


def persona_words(persona: list[str]) -> set[str]:
    out: set[str] = set()
    for sentence in persona:
        out |= _words(sentence)
    return out


def incidence(word_sets: list[set[str]], index: dict[str, int]) -> sp.csr_matrix:
    """Binary examples x words matrix; words missing from ``index`` are dropped."""
    ids = [sorted(index[w] for w in words if w in index) for words in word_sets]
    indptr = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum([len(x) for x in ids], out=indptr[1:])
    indices = np.fromiter((i for x in ids for i in x), dtype=np.int32, count=int(indptr[-1]))
    data = np.ones(len(indices), dtype=np.float64)
    return sp.csr_matrix((data, indices, indptr), shape=(len(ids), len(index)))


# What a *training* example's statistics leave out: its own dialogue, or every dialogue
# that shares its persona (the full corpus has ~8 dialogues per persona), or nothing.
STATISTICS = ("transductive", "leave_persona_out", "leave_dialogue_out", "all")
LOG_BASES = {"e": math.e, 2: 2.0, 10: 10.0}


def left_out_groups(statistics: str, dialogue_ids: list[str], personas: list[list[str]]) -> list[str] | None:
    """Group ids whose counts a training example must not see (None for ``all``)."""
    if statistics == "leave_dialogue_out":
        return list(dialogue_ids)
    if statistics == "leave_persona_out":
        return ["\n".join(sorted(p)) for p in personas]
    return None  # all, transductive: every example sees its own counts


@dataclass
class DialogueCounts:
    """Each training dialogue's own share of the counts, to leave it out of its examples' PMI.

    Keys put the dialogue first, so one ``searchsorted`` finds a (dialogue, word) count:
    dialogue * |V| + word, and dialogue * |Vx| * |Vp| + the pair key of ``PMIStats.keys``.
    """

    dialogues: np.ndarray  # sorted dialogue ids; a dialogue's number is its position
    num_examples: np.ndarray  # examples per dialogue, then a 0 for "no training dialogue"
    context_keys: np.ndarray
    context_counts: np.ndarray
    persona_keys: np.ndarray
    persona_counts: np.ndarray
    pair_keys: np.ndarray
    pair_counts: np.ndarray

    def numbers(self, dialogue_ids: list[str]) -> np.ndarray:
        """Dialogue numbers; len(dialogues) (nothing to leave out) for an unknown dialogue."""
        ids = np.asarray(dialogue_ids, dtype=str)
        if len(self.dialogues) == 0:
            return np.zeros(len(ids), dtype=np.int64)
        pos = np.minimum(np.searchsorted(self.dialogues, ids), len(self.dialogues) - 1)
        return np.where(self.dialogues[pos] == ids, pos, len(self.dialogues)).astype(np.int64)


@dataclass
class PMIStats:
    """Training statistics: context and persona vocabularies (sorted) and the PMI table."""

    context_vocab: list[str]  # sorted, so index order is the tie-break order
    persona_vocab: list[str]
    context_count: np.ndarray  # #training examples whose X contains wx
    persona_count: np.ndarray  # #training examples whose P contains wp
    keys: np.ndarray  # sorted int64 keys wx_id * |persona_vocab| + wp_id of seen pairs
    pair_count: np.ndarray  # #(wx in X and wp in P) for each key
    pmi: np.ndarray  # PMI(wp, wx) for each key
    num_examples: int
    dialogue_counts: DialogueCounts | None = None  # only when fit with dialogue ids

    @property
    def context_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.context_vocab)}

    @property
    def persona_index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.persona_vocab)}


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """values[keys == q] for each q, 0 where q is not a key (a pair never seen in training)."""
    if len(keys) == 0:
        return np.zeros(len(query))
    pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
    return np.where(keys[pos] == query, values[pos], 0.0)


def _pairs(X: sp.csr_matrix, P: sp.csr_matrix):
    """Every (context word, persona word) pair of every example (row) of X and P.

    Returns (ex, wx) with one entry per (example, context word), and (entry, wp) with one
    per pair: the entry it belongs to and its persona word.
    """
    ex = np.repeat(np.arange(X.shape[0]), np.diff(X.indptr))
    wx = X.indices.astype(np.int64)
    n_p = np.diff(P.indptr)[ex]
    entry = np.repeat(np.arange(len(ex)), n_p)
    first = np.repeat(np.cumsum(n_p) - n_p, n_p)
    wp = P.indices[P.indptr[ex[entry]] + (np.arange(len(entry)) - first)].astype(np.int64)
    return ex, wx, entry, wp


def _keyed(counts: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(row * n_cols + col, value) of the stored entries, sorted by key."""
    counts = counts.tocsr()
    counts.sort_indices()
    rows = np.repeat(np.arange(counts.shape[0], dtype=np.int64), np.diff(counts.indptr))
    return rows * counts.shape[1] + counts.indices.astype(np.int64), counts.data


def _dialogue_counts(dialogue_ids: list[str], X: sp.csr_matrix, P: sp.csr_matrix) -> DialogueCounts:
    dialogues, d = np.unique(np.asarray(dialogue_ids, dtype=str), return_inverse=True)
    d = d.astype(np.int64).ravel()
    nd, n = len(dialogues), X.shape[0]
    D = sp.csr_matrix((np.ones(n), (d, np.arange(n))), shape=(nd, n))  # dialogue x example
    context_keys, context_counts = _keyed(D @ X)
    persona_keys, persona_counts = _keyed(D @ P)
    vx, vp = X.shape[1], P.shape[1]
    if nd * vx * vp >= np.iinfo(np.int64).max:
        raise ValueError(f"PMI pair keys overflow int64: {nd} dialogues x {vx} x {vp} words")
    # (dialogue, wx, wp) of every pair of every example, counted: co-occurrences per dialogue
    keys = []
    for start in range(0, n, _CHUNK):
        ex, wx, entry, wp = _pairs(X[start : start + _CHUNK], P[start : start + _CHUNK])
        keys.append((d[start + ex[entry]] * vx + wx[entry]) * vp + wp)
    pair_keys, pair_counts = np.unique(np.concatenate(keys) if keys else np.zeros(0, np.int64), return_counts=True)
    return DialogueCounts(
        dialogues,
        np.append(np.bincount(d, minlength=nd), 0),
        context_keys,
        context_counts,
        persona_keys,
        persona_counts,
        pair_keys,
        pair_counts.astype(np.float64),
    )


def fit(queries: list[str], personas: list[list[str]], dialogue_ids: list[str] | None = None) -> PMIStats:
    """Count co-occurrences over the training examples.

    With ``dialogue_ids`` (one per example), also keep each dialogue's share of the counts,
    so that ``score`` can leave a training example's own dialogue out.
    """
    xs = [context_words(q) for q in queries]
    ps = [persona_words(p) for p in personas]
    context_vocab = sorted(set().union(*xs)) if xs else []
    persona_vocab = sorted(set().union(*ps)) if ps else []
    X = incidence(xs, {w: i for i, w in enumerate(context_vocab)})
    P = incidence(ps, {w: i for i, w in enumerate(persona_vocab)})
    n = X.shape[0]
    cx = np.asarray(X.sum(axis=0)).ravel()
    cp = np.asarray(P.sum(axis=0)).ravel()
    # co[x, p] = #examples with wx in X and wp in P; row-major with sorted indices: keys sorted
    keys, co = _keyed(X.T @ P)
    rows, cols = keys // max(len(persona_vocab), 1), keys % max(len(persona_vocab), 1)
    # ln( (co / cx) / (cp / N) )
    pmi = np.log(co * n / (cx[rows] * cp[cols]))
    dialogue_counts = None
    if dialogue_ids is not None:
        if len(dialogue_ids) != n:
            raise ValueError(f"{len(dialogue_ids)} dialogue ids for {n} examples")
        dialogue_counts = _dialogue_counts(dialogue_ids, X, P)
    return PMIStats(context_vocab, persona_vocab, cx, cp, keys, co, pmi, n, dialogue_counts)


def _pair_pmi_leaving_out(stats: PMIStats, d: np.ndarray, wx: np.ndarray, wp: np.ndarray, entry: np.ndarray):
    """PMI(wp, wx) of each pair and #wx of each entry from the training examples outside
    dialogue ``d`` (one per entry); 0 for a pair that never co-occurs there."""
    dc = stats.dialogue_counts
    vx, vp = len(stats.context_vocab), len(stats.persona_vocab)
    n = stats.num_examples - dc.num_examples[d]
    cx = stats.context_count[wx] - _lookup(dc.context_keys, dc.context_counts, d * vx + wx)
    de = d[entry]
    key = wx[entry] * vp + wp
    cp = stats.persona_count[wp] - _lookup(dc.persona_keys, dc.persona_counts, de * vp + wp)
    co = _lookup(stats.keys, stats.pair_count, key) - _lookup(dc.pair_keys, dc.pair_counts, de * (vx * vp) + key)
    seen = co > 0  # then #wx, #wp and N left are all > 0 too
    pmi = np.zeros(len(key))
    pmi[seen] = np.log(co[seen] * n[entry][seen] / (cx[entry][seen] * cp[seen]))
    return pmi, cx


def score(
    stats: PMIStats,
    queries: list[str],
    personas: list[list[str]],
    min_count: int,
    dialogue_ids: list[str] | None = None,
):
    """PMI(wx, P) of every kept context word of every example.

    ``dialogue_ids`` (training examples only, needs ``fit`` with dialogue ids): leave each
    example's own dialogue out of the statistics; a context word seen fewer than
    ``min_count`` times in the other dialogues is skipped. Returns parallel arrays
    (example row, context word id, score) sorted by example, then score descending, then word.
    """
    leave_out = dialogue_ids is not None
    if leave_out:
        if stats.dialogue_counts is None:
            raise ValueError("leaving dialogues out needs statistics fit with dialogue ids")
        if len(dialogue_ids) != len(queries):
            raise ValueError(f"{len(dialogue_ids)} dialogue ids for {len(queries)} examples")
        dialogue = stats.dialogue_counts.numbers(dialogue_ids)
    keep = stats.context_count >= min_count
    cindex = {w: i for i, w in enumerate(stats.context_vocab) if keep[i]}
    X = incidence([context_words(q) for q in queries], cindex)
    P = incidence([persona_words(p) for p in personas], stats.persona_index)
    vp = len(stats.persona_vocab)
    out_rows, out_words, out_scores = [], [], []
    for start in range(0, X.shape[0], _CHUNK):
        ex, wx, entry, wp = _pairs(X[start : start + _CHUNK], P[start : start + _CHUNK])
        if leave_out:
            pair_pmi, cx = _pair_pmi_leaving_out(stats, dialogue[start + ex], wx, wp, entry)
            enough = cx >= min_count
        else:
            pair_pmi = _lookup(stats.keys, stats.pmi, wx[entry] * vp + wp)
            enough = np.ones(len(ex), dtype=bool)
        total = np.bincount(entry, weights=pair_pmi, minlength=len(ex))
        out_rows.append(ex[enough] + start)
        out_words.append(wx[enough])
        out_scores.append(total[enough])
    rows = np.concatenate(out_rows) if out_rows else np.zeros(0, np.int64)
    words = np.concatenate(out_words) if out_words else np.zeros(0, np.int64)
    scores = np.concatenate(out_scores) if out_scores else np.zeros(0)
    order = np.lexsort((words, -scores, rows))  # words are ids into the sorted vocabulary
    return rows[order], words[order], scores[order]


def specific_words(
    stats: PMIStats,
    queries: list[str],
    personas: list[list[str]],
    threshold: float,
    max_words: int,
    min_count: int,
    dialogue_ids: list[str] | None = None,
    log_base: float = math.e,
) -> tuple[list[list[str]], list[list[float]]]:
    """Per example: context words with PMI(wx, P) >= threshold, at most ``max_words``, best first.

    ``dialogue_ids``: as in ``score`` (leave each training example's dialogue out).
    ``log_base``: the PMI's logarithm base; scores and threshold are in its units.
    """
    rows, words, scores = score(stats, queries, personas, min_count, dialogue_ids)
    scores = scores / math.log(log_base)
    passed = scores >= threshold
    rows, words, scores = rows[passed], words[passed], scores[passed]
    # rank within the example: position minus the example's first position (rows are sorted)
    first = np.searchsorted(rows, rows, side="left")
    top = (np.arange(len(rows)) - first) < max_words
    rows, words, scores = rows[top], words[top], scores[top]
    bounds = np.searchsorted(rows, np.arange(len(queries) + 1))
    vocab = stats.context_vocab
    out_words = [[vocab[w] for w in words[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    out_scores = [scores[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return out_words, out_scores


def mask_query(query: str, specific: list[str]) -> str:
    """X~: the query with every occurrence of its specific words replaced by <KEY>."""
    if not specific:
        return query
    s = set(specific)
    return " ".join(KEY if t in s else t for t in query.split())


def to_table(
    example_ids: list[str], queries: list[str], words: list[list[str]], scores: list[list[float]]
) -> pa.Table:
    masked = [mask_query(q, w) for q, w in zip(queries, words, strict=True)]
    return pa.Table.from_pydict(
        {
            "example_id": example_ids,
            "specific_words": words,
            "specific_scores": scores,
            "masked_query": masked,
        },
        schema=PMI,
    )
