"""Stage `congeneric`: the k_max training X~ most similar to every X~ -> data/congeneric/{split}.parquet.

Quadratic in the corpus: every X~ of every split is scored against every training X~
(all-pairs TF-IDF cosine, in blocks of queries), so N times the examples cost ~N^2 time.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet
from pipeline.preprocessing.congeneric import CongenericIndex, retrieve, to_table
from pipeline.schema import SPLITS

log = logging.getLogger(__name__)

PREPARED = "data/prepared"
PMI = "data/pmi"
OUT = "data/congeneric"


def _masked(split: str) -> tuple[list[str], list[str]]:
    """(example ids, X~) of a split, checked against data/prepared (rows must line up)."""
    ids = read_parquet(f"{PREPARED}/{split}.parquet", columns=["example_id"]).column("example_id").to_pylist()
    path = f"{PMI}/{split}.parquet"
    t = read_parquet(path, columns=["example_id", "masked_query"]).to_pydict()
    if t["example_id"] != ids:
        raise InputError(path, f"example ids do not match {PREPARED}/{split}.parquet (stale pmi output?)")
    return ids, t["masked_query"]


def main() -> None:
    logging.getLogger("gensim").setLevel(logging.WARNING)  # lifecycle chatter
    p = load_params("congeneric")
    train_ids, train_masked = _masked("train")
    index = CongenericIndex(train_masked)
    log.info("TF-IDF index over %d training X~ (%d terms)", index.num_docs, len(index.dictionary))
    for split in SPLITS:
        ids, masked = (train_ids, train_masked) if split == "train" else _masked(split)
        rows, scores = retrieve(index, masked, p["k_max"], exclude_self=(split == "train"), desc=split)
        zero = int((scores[:, 0] <= 0).sum()) if scores.shape[1] else len(ids)
        log.info(
            "%s: %d examples x %d congeneric contexts; mean best score %.3f, mean k-th %.3f; "
            "%d examples with no similar context (rows by index, score 0)",
            split,
            len(ids),
            rows.shape[1],
            float(np.mean(scores[:, 0])) if scores.size else 0.0,
            float(np.mean(scores[:, -1])) if scores.size else 0.0,
            zero,
        )
        write_parquet(to_table(ids, rows, scores), f"{OUT}/{split}.parquet")


if __name__ == "__main__":
    run_stage(main)
