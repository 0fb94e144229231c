"""Candidate pools for group-wise dual sampling (GCL, methods §3).

What the authors' code does (hengyicai/ContrastiveLearning4Dialogue,
``projects/contrastive_learning/scripts/build_data.py`` and ``BM25/bm25.py``):

- The BM25 *query* is the training context c; the *documents* are all training contexts
  (the multi-turn string with its ``__EOT__`` separators, split on spaces, duplicates
  removed); BM25 is gensim 3's (k1 = 1.5, b = 0.75, idf = ln((N - df + 0.5)/(df + 0.5)),
  negative idfs replaced by 0.25 x the mean idf; a query word counts once per
  occurrence) — the same formula as rank_bm25's ``BM25Okapi``.
- Candidates: the 10 best contexts by BM25 with the first dropped as "self" (so 9), plus
  the 10 lowest-scoring contexts; each candidate context c' comes with its own response
  r', giving candidate *pairs* (c', r').
- One retrieval serves both sides: the response side pairs (c, r') (MSN(c, r') →
  ``c_vs_samp_r_scores``), the context side pairs (c', r) (MSN(c', r) →
  ``samp_c_vs_r_scores``), see ``scripts/compute_score.py`` and ``common_things.py``.

This module does the same, with ``top`` candidates *after* excluding the example (the
brief's 10; ``top: 9`` reproduces the code's count), scored in sparse matrices instead of
one Python pass over the corpus per query:

- S = Q W^T, Q = query term counts, W = per-document BM25 term weights; computed for a
  block of queries at a time (memory: block x N scores) in float64, frequent terms as a
  dense GEMM and the rest as a sparse product, then rounded to float32 so that ranking
  does not depend on summation order; ``np.argpartition`` picks each row's candidates.
- Top: highest score first, ties by lower row. Bottom: lowest score first, ties by a
  per-query permutation of the documents, (position x A + query row x B) mod 2^32 with
  odd A. Ties at the bottom are common (the same few short contexts score lowest for
  most queries, and on other corpora many documents share no word and score 0); ordering
  them by row would hand every query the first rows of the file.
- A document is never both a top and a bottom candidate of one query (possible only when
  the corpus has fewer than top + bottom documents).
- Excluded from a query's candidates: the example itself and every training example with
  the identical context (its context-side pair would be the original pair again; the
  authors removed duplicate contexts). Examples whose context is empty (the bot opens the
  dialogue: ``__silence__`` is left out) are neither queries nor documents: their pools
  are empty.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from pipeline.io import progress
from pipeline.schema import EOT, GROUPS, SILENCE

log = logging.getLogger(__name__)

EPSILON = 0.25  # rank_bm25 / gensim: floor for negative idfs, as a fraction of the mean idf
_TIE_A = np.uint64(0x9E3779B1)  # odd: (row * A + c) mod 2^32 is a permutation of the rows
_TIE_B = np.uint64(0x85EBCA77)
_LOW32 = np.uint64(0xFFFFFFFF)
_DENSE_DF = 0.1  # terms in >= 10% of the contexts are scored with a dense GEMM


def gcl_context(history: list[str], query: str, max_tokens: int) -> list[str]:
    """Multi-turn context tokens: utterances joined by EOT, last ``max_tokens`` tokens (GCL)."""
    utterances = [u for u in (*history, query) if u and u != SILENCE]
    tokens = f" {EOT} ".join(utterances).split()
    tokens = tokens[-max_tokens:] if max_tokens > 0 else tokens
    while tokens and tokens[0] == EOT:  # truncation may start on a separator
        tokens = tokens[1:]
    return tokens


@dataclass
class Pools:
    """Per query row: candidate rows (top then bottom), their BM25 scores, top flags."""

    rows: list[np.ndarray]
    scores: list[np.ndarray]
    n_top: np.ndarray  # how many of each row's candidates are top-BM25


def term_counts(docs: list[list[str]]) -> tuple[sp.csr_matrix, dict[str, int]]:
    """Documents x vocabulary term-count matrix (vocabulary ids in first-seen order)."""
    vocab: dict[str, int] = {}
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    indices = np.fromiter((vocab.setdefault(w, len(vocab)) for d in docs for w in d), dtype=np.int32,
                          count=int(lengths.sum()))
    indptr = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    counts = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(docs), len(vocab)))
    counts.sum_duplicates()  # also sorts the indices of each row
    return counts, vocab


def okapi_idf(df: np.ndarray, n_docs: int, epsilon: float = EPSILON) -> np.ndarray:
    """rank_bm25 BM25Okapi's idf: ln((N-df+0.5)/(df+0.5)); negatives -> epsilon x mean idf."""
    idf = np.log(n_docs - df + 0.5) - np.log(df + 0.5)
    idf[idf < 0] = epsilon * idf.mean() if len(idf) else 0.0
    return idf


def bm25_weights(counts: sp.csr_matrix, k1: float, b: float) -> sp.csr_matrix:
    """W[d, t] = idf(t) * tf (k1+1) / (tf + k1 (1 - b + b |d| / avgdl))."""
    n_docs = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1]).astype(np.float64)
    idf = okapi_idf(df, n_docs)
    lengths = np.asarray(counts.sum(axis=1)).ravel()
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    tf = counts.data
    w = counts.copy()
    w.data = idf[counts.indices] * tf * (k1 + 1) / (tf + np.repeat(norm, np.diff(counts.indptr)))
    return w


def _workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def _tie_key(queries: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """Per-query permutation of document positions: (doc x A + query x B) mod 2^32."""
    return (docs.astype(np.uint64) * _TIE_A + queries.astype(np.uint64) * _TIE_B) & _LOW32


def _pick(values: np.ndarray, k: int, largest: bool, tie) -> np.ndarray:
    """Columns of the k largest (or smallest) values of each row, best first.

    Order: value, then ``tie(rows, cols)`` ascending. ``argpartition`` picks k columns in
    one pass; only rows where the k-th value is tied with columns left outside (a count
    checks that) are redone exactly from all their columns equal to that boundary.
    """
    n_rows, n = values.shape
    k = min(k, n)
    if k == 0:
        return np.zeros((n_rows, 0), dtype=np.int64)
    idx = np.argpartition(values, n - k, axis=1)[:, n - k :] if largest else np.argpartition(values, k - 1, axis=1)[:, :k]
    picked = np.take_along_axis(values, idx, axis=1)
    bound = (picked.min(axis=1) if largest else picked.max(axis=1))[:, None]
    reach = np.count_nonzero(values >= bound if largest else values <= bound, axis=1)
    need = np.flatnonzero(reach > k)  # ties straddle the boundary: decide them exactly
    if len(need):
        better = picked[need] > bound[need] if largest else picked[need] < bound[need]
        tr, tc = np.nonzero(values[need] == bound[need])
        o = np.lexsort((tie(need[tr], tc), tr))
        tr, tc = tr[o], tc[o]
        rank = np.arange(len(tr)) - np.searchsorted(tr, tr)
        keep = rank < k - np.count_nonzero(better, axis=1)[tr]
        tied_start = np.searchsorted(tr[keep], np.arange(len(need) + 1))
        tied = tc[keep]
        for i, j in enumerate(need):
            idx[j] = np.concatenate([idx[j][better[i]], tied[tied_start[i] : tied_start[i + 1]]])
            picked[j] = values[j, idx[j]]
    r = np.repeat(np.arange(n_rows), k)
    c = idx.ravel()
    order = np.lexsort((tie(r, c), -picked.ravel() if largest else picked.ravel(), r))
    return c[order].reshape(n_rows, k)


def _split_by_df(counts: sp.csr_matrix, weights: sp.csr_matrix):
    """Frequent terms as dense matrices (BLAS), the rest as sparse ones.

    A pair of documents shares on average ~10 terms, most of them frequent ones ("i",
    ".", "?", EOT); sparse x sparse products pay per shared term, so the frequent terms are
    far cheaper as one dense GEMM (float64, so the split changes nothing but rounding
    noise ~1e-13) while the long tail stays sparse.
    """
    n_docs = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    dense = np.flatnonzero(df >= _DENSE_DF * n_docs)
    rare = np.flatnonzero(df < _DENSE_DF * n_docs)
    return (
        counts[:, dense].toarray(),  # documents-as-queries x frequent terms (counts)
        np.ascontiguousarray(weights[:, dense].toarray().T),  # frequent terms x documents
        counts[:, rare].tocsr(),
        weights[:, rare].T.tocsr(),  # rare terms x documents
    )


def bm25_pools(
    contexts: list[list[str]],
    top: int = 10,
    bottom: int = 10,
    k1: float = 1.5,
    b: float = 0.75,
    block: int = 256,
) -> Pools:
    """Top and bottom BM25 candidates of every context among all the others (see module doc)."""
    n = len(contexts)
    doc_rows = np.array([i for i, c in enumerate(contexts) if c], dtype=np.int64)
    docs = [contexts[i] for i in doc_rows]
    counts, _ = term_counts(docs)
    q_dense, w_dense, q_sparse, w_sparse = _split_by_df(counts, bm25_weights(counts, k1, b))
    n_docs = len(docs)
    # Group identical contexts: a query excludes every document of its own group.
    keys: dict[str, int] = {}
    group = np.fromiter((keys.setdefault(" ".join(d), len(keys)) for d in docs), dtype=np.int64, count=n_docs)
    members = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[members], np.arange(len(keys) + 1))
    log.info(
        "BM25 over %d training contexts (%d distinct; %d empty contexts get no pool), %d terms "
        "(%d scored densely), blocks of %d queries",
        n_docs, len(keys), n - n_docs, counts.shape[1], q_dense.shape[1], block,
    )

    def score_block(lo: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        hi = min(lo + block, n_docs)
        scores = (q_sparse[lo:hi] @ w_sparse).toarray()  # queries x documents, float64
        scores += q_dense[lo:hi] @ w_dense
        scores = scores.astype(np.float32)  # rank on float32: summation order cannot matter
        g = group[lo:hi]
        ex_q = np.repeat(np.arange(hi - lo), starts[g + 1] - starts[g])
        ex_d = members[np.concatenate([np.arange(starts[x], starts[x + 1]) for x in g])]
        queries = doc_rows[lo:hi]
        # Top: score descending, then row ascending (document positions follow row order).
        scores[ex_q, ex_d] = -np.inf
        top_c = _pick(scores, top, largest=True, tie=lambda r, c: c)
        top_s = np.take_along_axis(scores, top_c, axis=1)
        # Bottom: score ascending, then a per-query permutation of the documents; never a
        # top candidate again (only possible when the corpus is tiny).
        scores[ex_q, ex_d] = np.inf
        np.put_along_axis(scores, top_c, np.inf, axis=1)
        bottom_c = _pick(scores, bottom, largest=False, tie=lambda r, c: _tie_key(queries[r], c))
        bottom_s = np.take_along_axis(scores, bottom_c, axis=1)
        return top_c.shape[1], np.concatenate([top_c, bottom_c], axis=1), np.concatenate([top_s, bottom_s], axis=1)

    rows_out: list[np.ndarray] = [np.zeros(0, np.int32)] * n
    scores_out: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    n_top = np.zeros(n, dtype=np.int32)
    available = n_docs - (starts[group + 1] - starts[group])  # documents a query may get
    starts_of_blocks = range(0, n_docs, block)
    # Blocks are independent; numpy and scipy release the GIL in the heavy calls.
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        results = pool.map(score_block, starts_of_blocks)
        for lo, (k_top, cand, cand_scores) in progress(
            zip(starts_of_blocks, results, strict=True), desc="bm25 pools", unit="block", total=len(starts_of_blocks)
        ):
            for j in range(cand.shape[0]):  # excluded documents sort last: keep the first `available`
                a = available[lo + j]
                t = min(k_top, a)
                keep = np.r_[0:t, k_top : k_top + min(cand.shape[1] - k_top, a - t)]
                q = doc_rows[lo + j]
                rows_out[q] = doc_rows[cand[j, keep]].astype(np.int32)
                scores_out[q] = cand_scores[j, keep]
                n_top[q] = t
    return Pools(rows_out, scores_out, n_top)


def rank_bm25_pools(contexts: list[list[str]], top: int = 10, bottom: int = 10, k1: float = 1.5,
                    b: float = 0.75, queries: list[int] | None = None) -> Pools:
    """The slow reference: rank_bm25's BM25Okapi, one ``get_scores`` pass per query.

    Same exclusions and tie-breaks as ``bm25_pools`` (scores rounded to float32 first), so
    that any difference is down to the scoring. ``queries``: row subset to score (others
    get empty pools), for timing on a sample.
    """
    from rank_bm25 import BM25Okapi

    n = len(contexts)
    doc_rows = np.array([i for i, c in enumerate(contexts) if c], dtype=np.int64)
    bm25 = BM25Okapi([contexts[i] for i in doc_rows], k1=k1, b=b, epsilon=EPSILON)
    keys: dict[str, int] = {}
    group = np.array([keys.setdefault(" ".join(contexts[i]), len(keys)) for i in doc_rows], dtype=np.int64)
    rows_out: list[np.ndarray] = [np.zeros(0, np.int32)] * n
    scores_out: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    n_top = np.zeros(n, dtype=np.int32)
    group_of = dict(zip(doc_rows.tolist(), group.tolist(), strict=True))
    todo = [q for q in (range(n) if queries is None else queries) if contexts[q]]
    doc_ids = np.arange(len(doc_rows), dtype=np.int64)
    for q in progress(todo, desc="rank_bm25 pools", unit="query"):
        s = bm25.get_scores(contexts[q]).astype(np.float32)
        keep = group != group_of[q]
        ids = doc_ids[keep]
        s_keep = s[keep]
        t = ids[np.lexsort((ids, -s_keep))][:top]
        rest = ~np.isin(ids, t)
        ids, s_keep = ids[rest], s_keep[rest]
        bt = ids[np.lexsort((_tie_key(np.full(len(ids), q), ids), s_keep))][:bottom]
        cand = np.concatenate([t, bt])
        rows_out[q] = doc_rows[cand].astype(np.int32)
        scores_out[q] = s[cand]
        n_top[q] = len(t)
    return Pools(rows_out, scores_out, n_top)


def top_agreement(a: Pools, b: Pools, rows: list[int] | None = None) -> float:
    """Mean overlap |top_a ∩ top_b| / |top_b| over query rows with a non-empty pool in b."""
    rows = range(len(b.rows)) if rows is None else rows
    shares = []
    for q in rows:
        tb = set(b.rows[q][: b.n_top[q]].tolist())
        if tb:
            shares.append(len(tb & set(a.rows[q][: a.n_top[q]].tolist())) / len(tb))
    return float(np.mean(shares)) if shares else 1.0


def to_table(example_ids: list[str], pools: Pools) -> pa.Table:
    n = len(example_ids)
    return pa.table(
        {
            "example_id": pa.array(example_ids, pa.string()),
            "candidate_rows": pa.array([r.tolist() for r in pools.rows], pa.list_(pa.int32())),
            "bm25_scores": pa.array([s.tolist() for s in pools.scores], pa.list_(pa.float32())),
            "is_top": pa.array(
                [[True] * int(t) + [False] * (len(r) - int(t)) for r, t in zip(pools.rows, pools.n_top, strict=True)],
                pa.list_(pa.bool_()),
            ),
            "msn_response_side": pa.nulls(n, pa.list_(pa.float32())),
            "msn_context_side": pa.nulls(n, pa.list_(pa.float32())),
        },
        schema=GROUPS,
    )
