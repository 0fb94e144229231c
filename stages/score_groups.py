"""MSN matching probabilities for the GCL candidate pools: ``python -m stages.score_groups``.

Reads data/groups/train.parquet, checkpoints/msn/best.pt and data/prepared; writes
data/msn_scores/train.parquet: data/groups with ``msn_response_side`` = MSN(c, r') and
``msn_context_side`` = MSN(c', r) filled for every candidate (schema.GROUPS).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.dataset import Vocab
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet
from pipeline.msn import load_msn, load_msn_data, score_pools

log = logging.getLogger(__name__)


def main(data_dir: str | Path = "data", checkpoint: str | Path = "checkpoints/msn/best.pt") -> Path:
    p = load_params("score_groups")
    data_dir = Path(data_dir)
    model = load_msn(checkpoint)
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    if len(vocab) != model.config.vocab_size:
        raise InputError(checkpoint, f"MSN was trained on {model.config.vocab_size} tokens, vocab has {len(vocab)}")
    data = load_msn_data(data_dir / "prepared" / "train.parquet", vocab, model.config.max_words)
    groups = read_parquet(data_dir / "groups" / "train.parquet")
    table = score_pools(model, data, groups, p["max_pairs"])
    is_top = np.concatenate([np.asarray(x, dtype=bool) for x in table.column("is_top").to_pylist() if x])
    for side in ("msn_response_side", "msn_context_side"):
        q = np.concatenate([np.asarray(x) for x in table.column(side).to_pylist() if x])
        log.info("%s: mean q %.3f on top-BM25 candidates, %.3f on bottom ones (%d pairs)", side,
                 q[is_top].mean(), q[~is_top].mean(), len(q))
    return write_parquet(table, data_dir / "msn_scores" / "train.parquet")


if __name__ == "__main__":
    run_stage(main)
