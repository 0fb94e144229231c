"""Congeneric contexts (PEDNet's PDNet input, methods §2).

For every example, the training examples whose masked query X~ (specific words -> <KEY>)
is most similar to its own X~: cosine of Gensim TF-IDF vectors through a
``SparseMatrixSimilarity`` index over the training X~ (dictionary and idf from training
only). Every token of X~ counts, <KEY> and stop words included: most queries are short
chit-chat, and the idf already weights common tokens down.

Ranking is exact and deterministic: higher score first, then lower training row. A query
with no token known to the training dictionary (empty X~ in valid/test) scores 0 against
every row and so gets training rows 0, 1, 2, ... with score 0; ``__silence__`` (the bot
opens) is an ordinary token, so silent openings retrieve other silent openings.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from pipeline.io import progress
from pipeline.schema import CONGENERIC

log = logging.getLogger(__name__)

_BLOCK_CELLS = 1 << 23  # query rows per block x training rows: bounds the dense score block


class CongenericIndex:
    """TF-IDF similarity index over the training X~."""

    def __init__(self, train_masked: list[str]):
        from gensim.corpora import Dictionary
        from gensim.models import TfidfModel
        from gensim.similarities import SparseMatrixSimilarity

        docs = [x.split() for x in train_masked]
        self.dictionary = Dictionary(docs)
        self.tfidf = TfidfModel(dictionary=self.dictionary)
        corpus = [self.tfidf[self.dictionary.doc2bow(d)] for d in docs]
        self.index = SparseMatrixSimilarity(
            corpus, num_features=max(len(self.dictionary), 1), num_docs=len(docs), dtype=np.float32
        )
        self.num_docs = len(docs)

    def similarities(self, masked: list[str]) -> np.ndarray:
        """Dense (len(masked) x num_docs) cosine scores, C-contiguous.

        What ``self.index[queries]`` computes, but as sparse index x dense query block:
        the block's scores are nearly all non-zero (stop words, <KEY>), and a dense
        right-hand side is several times faster than gensim's sparse x sparse product.
        """
        from gensim import matutils

        bows = [self.tfidf[self.dictionary.doc2bow(x.split())] for x in masked]
        query = matutils.corpus2dense(
            bows, num_terms=self.index.index.shape[1], num_docs=len(bows), dtype=np.float32
        )
        return np.ascontiguousarray((self.index.index @ query).T)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` columns with the highest scores, ties by lower column; (cols, scores).

    Scores must be float32 and >= 0, or negative to rule a column out. One int64 key per
    cell orders them exactly: the float's bits (monotone for non-negative floats) above the
    complement of the column, so keys are unique and one ``argpartition`` gives the exact
    top k, ties included, with no sort of the whole row.
    """
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k <= 0:
        return np.zeros((n_rows, 0), np.int64), np.zeros((n_rows, 0), np.float32)
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    key = scores.view(np.int32).astype(np.int64)
    key <<= 32
    key |= np.int64(0xFFFFFFFF) - np.arange(n_cols, dtype=np.int64)
    part = np.argpartition(key, n_cols - k, axis=1)[:, n_cols - k :]
    order = np.argsort(-np.take_along_axis(key, part, axis=1), axis=1)
    cols = np.take_along_axis(part, order, axis=1)
    return cols, np.take_along_axis(scores, cols, axis=1)


def retrieve(
    index: CongenericIndex, masked: list[str], k: int, exclude_self: bool, desc: str = "congeneric"
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar training rows of every X~ in ``masked``, in blocks of queries.

    ``exclude_self``: ``masked`` *is* the training set, row i must not retrieve itself.
    """
    n = index.num_docs
    k = min(k, n - 1 if exclude_self else n)
    block = max(1, _BLOCK_CELLS // max(n, 1))
    rows_out = np.zeros((len(masked), k), dtype=np.int32)
    scores_out = np.zeros((len(masked), k), dtype=np.float32)
    for start in progress(range(0, len(masked), block), desc=desc, unit="block"):
        stop = min(start + block, len(masked))
        scores = index.similarities(masked[start:stop])
        if exclude_self:
            scores[np.arange(stop - start), np.arange(start, stop)] = -1.0
        cols, picked = top_k(scores, k)
        rows_out[start:stop] = cols
        scores_out[start:stop] = picked
    return rows_out, scores_out


def to_table(example_ids: list[str], rows: np.ndarray, scores: np.ndarray) -> pa.Table:
    n, k = rows.shape
    offsets = (
        pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)) if k else pa.array(np.zeros(n + 1, np.int32))
    )
    return pa.Table.from_arrays(
        [
            pa.array(example_ids, pa.string()),
            pa.ListArray.from_arrays(
                offsets, pa.array(rows.ravel().astype(np.int32)), type=pa.list_(pa.int32())
            ),
            pa.ListArray.from_arrays(
                offsets, pa.array(scores.ravel().astype(np.float32)), type=pa.list_(pa.float32())
            ),
        ],
        schema=CONGENERIC,
    )
