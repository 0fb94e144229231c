"""Word vectors for the shared vocabulary (PEDNet: 300-d embeddings, GloVe in the paper).

No pretrained file is reachable offline, so by default Word2Vec is trained with Gensim on
the training text; a GloVe/fastText/word2vec text file can be used instead. Either way the
output has one row per vocabulary token, in vocabulary order, so row i is token id i.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.io import InputError
from pipeline.schema import EMBEDDINGS, PAD

log = logging.getLogger(__name__)


def train_word2vec(
    sentences: Iterable[str],
    dim: int = 300,
    window: int = 5,
    epochs: int = 10,
    min_count: int = 1,
    sg: int = 1,
    seed: int = 1,
) -> dict[str, np.ndarray]:
    """Train Word2Vec on space-tokenised sentences; return token -> vector.

    Deterministic: one worker thread (several threads race on the shared weights) and a
    fixed seed. Gensim 4 initialises vectors from ``numpy.default_rng(seed)``, not from
    Python's salted ``hash``, so PYTHONHASHSEED does not matter (a test checks this).
    """
    from gensim.models import Word2Vec

    corpus = [s.split() for s in sentences]
    corpus = [s for s in corpus if s]
    if not corpus:
        raise ValueError("no training text for Word2Vec")
    model = Word2Vec(
        sentences=corpus,
        vector_size=dim,
        window=window,
        epochs=epochs,
        min_count=min_count,
        sg=sg,
        seed=seed,
        workers=1,
    )
    wv = model.wv
    return {token: wv.vectors[i] for i, token in enumerate(wv.index_to_key)}


def _has_header(path: Path) -> bool:
    """word2vec/fastText text files start with "<count> <dim>"; GloVe files do not."""
    with open(path, "rb") as f:
        first = f.readline().split()
    return len(first) == 2 and all(x.isdigit() for x in first)


def load_pretrained(path: str | os.PathLike, dim: int) -> dict[str, np.ndarray]:
    """Read a GloVe (no header) or word2vec/fastText (header) text file of ``dim``-d vectors."""
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "pretrained vectors file not found (embeddings.pretrained)")
    if path.stat().st_size == 0:
        raise InputError(path, "pretrained vectors file is empty")
    header = _has_header(path)
    try:
        kv = KeyedVectors.load_word2vec_format(path, binary=False, no_header=not header)
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text at byte {e.start}: not a GloVe/word2vec text file") from e
    except (ValueError, EOFError, IndexError) as e:
        kind = "word2vec/fastText" if header else "GloVe"
        raise InputError(path, f"malformed {kind} text file: {e}") from e
    if kv.vector_size != dim:
        raise InputError(path, f"vectors are {kv.vector_size}-d but embeddings.dim is {dim}")
    log.info("read %d pretrained %d-d vectors from %s", len(kv.index_to_key), dim, path)
    return {token: kv.vectors[i] for i, token in enumerate(kv.index_to_key)}


def align(vocab: list[str], vectors: dict[str, np.ndarray], dim: int, seed: int) -> tuple[np.ndarray, int]:
    """Matrix with row i = vector of ``vocab[i]``; return it and the number of tokens covered.

    Tokens without a vector get N(0, (0.1 * std of the known vectors)^2), drawn for the whole
    matrix from one seeded generator so a token's vector depends only on (seed, its id);
    ``<pad>`` is zeros so padding adds nothing to sums and means.
    """
    known = np.array([t in vectors for t in vocab], dtype=bool)
    matrix = np.zeros((len(vocab), dim), dtype=np.float32)
    if known.any():
        matrix[known] = np.stack([vectors[t] for t, k in zip(vocab, known, strict=True) if k])
    scale = 0.1 * float(matrix[known].std()) if known.any() else 0.1
    noise = np.random.default_rng(seed).normal(0.0, scale, size=matrix.shape).astype(np.float32)
    matrix[~known] = noise[~known]
    covered = int(known.sum())
    if PAD in vocab:
        pad = vocab.index(PAD)
        covered -= int(known[pad])
        matrix[pad] = 0.0
    return matrix, covered


def to_table(vocab: list[str], matrix: np.ndarray) -> pa.Table:
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).ravel())
    offsets = pa.array(np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32))
    vector = pa.ListArray.from_arrays(offsets, values, type=EMBEDDINGS.field("vector").type)
    return pa.Table.from_arrays([pa.array(vocab, pa.string()), vector], schema=EMBEDDINGS)
