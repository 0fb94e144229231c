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

from pipeline.io import InputError, progress
from pipeline.preprocessing.text import gcl_context  # noqa: F401 (the contexts BM25 ranks; re-exported)
from pipeline.schema import GROUPS

log = logging.getLogger(__name__)

EPSILON = 0.25  # rank_bm25 / gensim: floor for negative idfs, as a fraction of the mean idf
_TIE_A = np.uint64(0x9E3779B1)  # odd: (row * A + c) mod 2^32 is a permutation of the rows
_TIE_B = np.uint64(0x85EBCA77)
_LOW32 = np.uint64(0xFFFFFFFF)
_DENSE_DF = 0.1  # terms in >= 10% of the contexts are scored with a dense GEMM


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


NEGATIVES = ("bottom", "random", "middle")  # where the non-top candidates come from


def _grouping(keys: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(group id per document, documents sorted by group, start of each group in it)."""
    ids: dict = {}
    group = np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))
    members = np.argsort(group, kind="stable")
    return group, members, np.searchsorted(group[members], np.arange(len(ids) + 1))


def bm25_pools(
    contexts: list[list[str]],
    top: int = 10,
    bottom: int = 10,
    k1: float = 1.5,
    b: float = 0.75,
    block: int = 256,
    dialogues: list[str] | None = None,
    negatives: str = "bottom",
    min_negative_tokens: int = 0,
    seed: int = 1,
) -> Pools:
    """Top BM25 candidates of every context among all the others, plus ``bottom`` more (see
    module doc).

    ``dialogues`` (one id per context): a query never gets a candidate of its own
    dialogue. ``negatives``: the other candidates are the lowest-BM25 contexts ("bottom",
    the authors'), uniformly random ones ("random", seeded per query row) or those ranked
    around the query's median BM25 score ("middle"); in every case
    only contexts of at least ``min_negative_tokens`` tokens (the greetings that open a
    dialogue score lowest for almost every query).
    """
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives {negatives!r}: one of {NEGATIVES}")
    n = len(contexts)
    doc_rows = np.array([i for i, c in enumerate(contexts) if c], dtype=np.int64)
    docs = [contexts[i] for i in doc_rows]
    counts, _ = term_counts(docs)
    q_dense, w_dense, q_sparse, w_sparse = _split_by_df(counts, bm25_weights(counts, k1, b))
    n_docs = len(docs)
    # A query excludes every document with its own context (identical contexts), and with
    # `dialogues` every document of its own dialogue.
    groupings = [_grouping([" ".join(d) for d in docs])]
    if dialogues is not None:
        groupings.append(_grouping([dialogues[i] for i in doc_rows]))
    too_short = np.flatnonzero(np.fromiter(map(len, docs), dtype=np.int64, count=n_docs) < min_negative_tokens)
    log.info(
        "BM25 over %d training contexts (%d distinct; %d empty contexts get no pool), %d terms "
        "(%d scored densely), blocks of %d queries; %s negatives%s, %d contexts under %d tokens never one",
        n_docs, len(groupings[0][2]) - 1, n - n_docs, counts.shape[1], q_dense.shape[1], block, negatives,
        ", own dialogue excluded" if dialogues is not None else "", len(too_short), min_negative_tokens,
    )

    def score_block(lo: int) -> tuple[np.ndarray, np.ndarray]:
        hi = min(lo + block, n_docs)
        scores = (q_sparse[lo:hi] @ w_sparse).toarray()  # queries x documents, float64
        scores += q_dense[lo:hi] @ w_dense
        scores = scores.astype(np.float32)  # rank on float32: summation order cannot matter
        ex_q, ex_d = [], []
        for group, members, starts in groupings:
            g = group[lo:hi]
            ex_q.append(np.repeat(np.arange(hi - lo), starts[g + 1] - starts[g]))
            ex_d.append(members[np.concatenate([np.arange(starts[x], starts[x + 1]) for x in g])])
        ex_q, ex_d = np.concatenate(ex_q), np.concatenate(ex_d)
        queries = doc_rows[lo:hi]
        raw = scores.copy()
        # Top: score descending, then row ascending (document positions follow row order).
        scores[ex_q, ex_d] = -np.inf
        top_c = _pick(scores, top, largest=True, tie=lambda r, c: c)
        top_ok = np.isfinite(np.take_along_axis(scores, top_c, axis=1))  # -inf: excluded (tiny corpora)
        # The rest: never excluded, never a top candidate again, never too short (inf).
        scores[ex_q, ex_d] = np.inf
        scores[:, too_short] = np.inf
        np.put_along_axis(scores, top_c, np.inf, axis=1)
        if negatives == "bottom":  # score ascending, then a per-query permutation of the documents
            rest_c = _pick(scores, bottom, largest=False, tie=lambda r, c: _tie_key(queries[r], c))
            rest_ok = np.isfinite(np.take_along_axis(scores, rest_c, axis=1))
        else:
            rest_c = np.zeros((hi - lo, bottom), dtype=np.int64)
            rest_ok = np.zeros((hi - lo, bottom), dtype=bool)
            for j in range(hi - lo):
                eligible = np.flatnonzero(np.isfinite(scores[j]))
                if negatives == "random":
                    take = np.random.default_rng([seed, int(queries[j])]).choice(
                        eligible, size=min(bottom, len(eligible)), replace=False)
                else:  # middle: the window of ranks around the median score, ties as at the bottom
                    ranked = eligible[np.lexsort((_tie_key(queries[j : j + 1], eligible), scores[j, eligible]))]
                    start = max(0, (len(ranked) - bottom) // 2)
                    take = ranked[start : start + bottom]
                rest_c[j, : len(take)] = take
                rest_ok[j, : len(take)] = True
        cand = np.concatenate([top_c, rest_c], axis=1)
        ok = np.concatenate([top_ok, rest_ok], axis=1)
        return cand, np.take_along_axis(raw, cand, axis=1), ok, top_ok.sum(1)

    rows_out: list[np.ndarray] = [np.zeros(0, np.int32)] * n
    scores_out: list[np.ndarray] = [np.zeros(0, np.float32)] * n
    n_top = np.zeros(n, dtype=np.int32)
    starts_of_blocks = range(0, n_docs, block)
    # Blocks are independent; numpy and scipy release the GIL in the heavy calls.
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        results = pool.map(score_block, starts_of_blocks)
        for lo, (cand, cand_scores, ok, k_top) in progress(
            zip(starts_of_blocks, results, strict=True), desc="bm25 pools", unit="block", total=len(starts_of_blocks)
        ):
            for j in range(cand.shape[0]):  # candidates a query may not get are left out
                q = doc_rows[lo + j]
                rows_out[q] = doc_rows[cand[j, ok[j]]].astype(np.int32)
                scores_out[q] = cand_scores[j, ok[j]]
                n_top[q] = k_top[j]
    return Pools(rows_out, scores_out, n_top)


def rank_bm25_pools(contexts: list[list[str]], top: int = 10, bottom: int = 10, k1: float = 1.5,
                    b: float = 0.75, queries: list[int] | None = None, dialogues: list[str] | None = None,
                    min_negative_tokens: int = 0) -> Pools:
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
    dialogue = np.asarray([dialogues[i] for i in doc_rows], dtype=object) if dialogues is not None else None
    lengths = np.asarray([len(contexts[i]) for i in doc_rows], dtype=np.int64)
    todo = [q for q in (range(n) if queries is None else queries) if contexts[q]]
    doc_ids = np.arange(len(doc_rows), dtype=np.int64)
    for q in progress(todo, desc="rank_bm25 pools", unit="query"):
        s = bm25.get_scores(contexts[q]).astype(np.float32)
        keep = group != group_of[q]
        if dialogues is not None:
            keep &= dialogue != dialogues[q]
        ids = doc_ids[keep]
        s_keep = s[keep]
        t = ids[np.lexsort((ids, -s_keep))][:top]
        rest = ~np.isin(ids, t) & (lengths[ids] >= min_negative_tokens)
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


def pool_jobs(groups: pa.Table, n: int) -> tuple[list, np.ndarray]:
    """(candidate lists, jobs [P, 5]: context row, response row, target row, slot, side),
    side 0 the response side (c, r'), 1 the context side (c', r): every pair a scorer (MSN,
    pipeline.contrastive.matching) must rate for the pools of ``groups`` (n rows of the split)."""
    cand = groups.column("candidate_rows").to_pylist()
    if len(cand) != n:
        raise InputError("data/groups/train.parquet", f"{len(cand)} rows, data/prepared/train.parquet has {n}")
    jobs = []
    for i, rows in enumerate(cand):
        for slot, j in enumerate(rows or []):
            if not 0 <= j < n:
                raise InputError("data/groups/train.parquet", f"candidate row {j} out of range", i)
            jobs.append((i, j, i, slot, 0))
            jobs.append((j, i, i, slot, 1))
    return cand, np.asarray(jobs, dtype=np.int64).reshape(-1, 5)
