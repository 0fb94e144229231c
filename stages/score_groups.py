"""Matching probabilities for the GCL candidate pools: ``python -m stages.score_groups``.

Reads data/groups/{train,valid}.parquet and data/prepared, and the scorer's checkpoint
(params ``score_groups.scorer``): ``msn`` (default) checkpoints/msn/best.pt; ``minilm``
(the fine-tuned bi-encoder), ``minilm_zeroshot`` or ``bm25`` checkpoints/matcher/
(calibrated by Platt scaling, pipeline/contrastive/matching.py). Writes data/msn_scores/{train,valid}.parquet:
data/groups with ``msn_response_side`` = q(c, r') and ``msn_context_side`` = q(c', r)
filled for every candidate (schema.GROUPS), whichever scorer made them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.contrastive import matching
from pipeline.contrastive.msn import load_msn, load_msn_data, score_pools
from pipeline.dataset import Vocab
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet

log = logging.getLogger(__name__)

SCORERS = ("msn", "minilm", "minilm_zeroshot", "bm25")


def check_params(p: dict) -> str:
    """The scorer (msn when the key is absent)."""
    scorer = p.get("scorer", "msn")
    if scorer not in SCORERS:
        raise InputError("params.yaml", f"score_groups.scorer: expected one of {' | '.join(SCORERS)}, got {scorer!r}")
    return scorer


def main(data_dir: str | Path = "data", checkpoint: str | Path = "checkpoints/msn/best.pt",
         matcher_dir: str | Path = "checkpoints/matcher") -> Path:
    p = load_params("score_groups")
    scorer = check_params(p)
    data_dir = Path(data_dir)
    out = None
    for split in ("train", "valid"):  # valid: the groups of the validation contrastive loss
        groups = read_parquet(data_dir / "groups" / f"{split}.parquet")
        prepared = data_dir / "prepared" / f"{split}.parquet"
        if scorer == "msn":
            model = load_msn(checkpoint)
            vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
            if len(vocab) != model.config.vocab_size:
                raise InputError(checkpoint, f"MSN was trained on {model.config.vocab_size} tokens, vocab has "
                                             f"{len(vocab)}")
            table = score_pools(model, load_msn_data(prepared, vocab, model.config.max_words), groups, p["max_pairs"])
        else:
            table = matching.score_pools(scorer, matcher_dir, prepared, groups)
        is_top = np.concatenate([np.asarray(x, dtype=bool) for x in table.column("is_top").to_pylist() if x])
        for side in ("msn_response_side", "msn_context_side"):
            q = np.concatenate([np.asarray(x) for x in table.column(side).to_pylist() if x])
            log.info("%s %s (%s): mean q %.3f on top-BM25 candidates, %.3f on the others (%d pairs)", split, side,
                     scorer, q[is_top].mean(), q[~is_top].mean(), len(q))
        out = write_parquet(table, data_dir / "msn_scores" / f"{split}.parquet")
    return out

if __name__ == "__main__":
    run_stage(main)
