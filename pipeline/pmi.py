"""Specific words of a query by PMI with the persona (PEDNet, methods §2).

For a training example with context words W_x (the query X) and persona words W_p (all
persona sentences), statistics count *examples*:

    P(wp | wx) = #(wx in X and wp in P) / #(wx in X),   P(wp) = #(wp in P) / N
    PMI(wp, wx) = ln P(wp | wx) / P(wp)
    PMI(wx, P)  = sum over wp in W_p of PMI(wp, wx)

A pair never seen together in training contributes 0 to the sum (its PMI is -inf, which
would make the sum meaningless); this only matters for valid/test, since in training the
example itself makes every one of its own pairs seen. Context words kept: PMI(wx, P) >=
threshold, at most ``max_words``, highest first, ties by word.

Everything is counted with sparse incidence matrices (examples x words): the co-occurrence
counts are X^T P, and an example's scores are looked up pair by pair with ``searchsorted``
on the co-occurrence keys, so the cost is the number of (wx, wp) pairs in the examples.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from pipeline.schema import KEY, PMI, SPECIALS
from pipeline.text import content_words

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


@dataclass
class PMIStats:
    """Training statistics: context and persona vocabularies (sorted) and the PMI table."""

    context_vocab: list[str]  # sorted, so index order is the tie-break order
    persona_vocab: list[str]
    context_count: np.ndarray  # #training examples whose X contains wx
    keys: np.ndarray  # sorted int64 keys wx_id * |persona_vocab| + wp_id of seen pairs
    pmi: np.ndarray  # PMI(wp, wx) for each key
    num_examples: int

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


def fit(queries: list[str], personas: list[list[str]]) -> PMIStats:
    """Count co-occurrences over the training examples."""
    xs = [context_words(q) for q in queries]
    ps = [persona_words(p) for p in personas]
    context_vocab = sorted(set().union(*xs)) if xs else []
    persona_vocab = sorted(set().union(*ps)) if ps else []
    X = incidence(xs, {w: i for i, w in enumerate(context_vocab)})
    P = incidence(ps, {w: i for i, w in enumerate(persona_vocab)})
    n = X.shape[0]
    cx = np.asarray(X.sum(axis=0)).ravel()
    cp = np.asarray(P.sum(axis=0)).ravel()
    co = (X.T @ P).tocsr()  # co[x, p] = #examples with wx in X and wp in P
    co.sort_indices()
    rows = np.repeat(np.arange(co.shape[0], dtype=np.int64), np.diff(co.indptr))
    cols = co.indices.astype(np.int64)
    # ln( (co / cx) / (cp / N) )
    pmi = np.log(co.data * n / (cx[rows] * cp[cols]))
    keys = rows * len(persona_vocab) + cols  # row-major with sorted indices: already sorted
    return PMIStats(context_vocab, persona_vocab, cx, keys, pmi, n)


def score(stats: PMIStats, queries: list[str], personas: list[list[str]], min_count: int):
    """PMI(wx, P) of every kept context word of every example.

    Returns parallel arrays (example row, context word id, score) sorted by example, then
    score descending, then word.
    """
    keep = stats.context_count >= min_count
    cindex = {w: i for i, w in enumerate(stats.context_vocab) if keep[i]}
    X = incidence([context_words(q) for q in queries], cindex)
    P = incidence([persona_words(p) for p in personas], stats.persona_index)
    vp = len(stats.persona_vocab)
    out_rows, out_words, out_scores = [], [], []
    for start in range(0, X.shape[0], _CHUNK):
        Xc, Pc = X[start : start + _CHUNK], P[start : start + _CHUNK]
        # One entry per (example, context word); repeat it once per persona word of the example.
        ex = np.repeat(np.arange(Xc.shape[0]), np.diff(Xc.indptr))
        wx = Xc.indices.astype(np.int64)
        n_p = np.diff(Pc.indptr)[ex]
        entry = np.repeat(np.arange(len(ex)), n_p)
        first = np.repeat(np.cumsum(n_p) - n_p, n_p)
        wp = Pc.indices[Pc.indptr[ex[entry]] + (np.arange(len(entry)) - first)].astype(np.int64)
        key = wx[entry] * vp + wp
        total = np.bincount(entry, weights=_lookup(stats.keys, stats.pmi, key), minlength=len(ex))
        out_rows.append(ex + start)
        out_words.append(wx)
        out_scores.append(total)
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
) -> tuple[list[list[str]], list[list[float]]]:
    """Per example: context words with PMI(wx, P) >= threshold, at most ``max_words``, best first."""
    rows, words, scores = score(stats, queries, personas, min_count)
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
