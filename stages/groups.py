"""Stage `groups`: BM25 candidate pools of every pair -> data/groups/{train,valid}.parquet.

Each split is retrieved within itself: training pairs get training candidates (the groups
GCL trains on), valid pairs valid candidates (the groups of the validation contrastive loss
that selects GCL checkpoints, as the authors' code does).

Quadratic in the corpus: every context is scored against every other context of its split
(all-pairs BM25, in blocks of queries; memory block x N), so N times the pairs cost ~N^2 time.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.contrastive import groups
from pipeline.io import load_params, read_parquet, run_stage, write_parquet

log = logging.getLogger(__name__)

SPLITS = ("train", "valid")
# Keys that older params files lack: the clean-group defaults of params.yaml.
DEFAULTS = {"same_dialogue": False, "negatives": "random", "min_negative_tokens": 10, "seed": 1}


def pools_of(p: dict, prepared: dict, negatives: str | None = None) -> groups.Pools:
    """The BM25 pools of a split's columns (example_id, dialogue_id, history, query) under the
    `groups` params ``p``; ``negatives`` overrides p["negatives"] (stages.negative_options)."""
    contexts = [groups.gcl_context(h, q, p["context_tokens"])
                for h, q in zip(prepared["history"], prepared["query"], strict=True)]
    log.info("%d pairs, contexts of %.1f tokens on average (last %d kept)", len(contexts),
             float(np.mean([len(c) for c in contexts])) if contexts else 0.0, p["context_tokens"])
    return groups.bm25_pools(contexts, p["top"], p["bottom"], p["k1"], p["b"],
                             dialogues=None if p["same_dialogue"] else prepared["dialogue_id"],
                             negatives=negatives or p["negatives"], min_negative_tokens=p["min_negative_tokens"],
                             seed=p["seed"])


def main() -> None:
    p = {**DEFAULTS, **load_params("groups")}  # load_params checks the section (pipeline/params_schema.py)
    for split in SPLITS:
        prepared = f"data/prepared/{split}.parquet"
        t = read_parquet(prepared, columns=["example_id", "dialogue_id", "history", "query"]).to_pydict()
        log.info("read %s", prepared)
        pools = pools_of(p, t)
        sizes = np.array([len(r) for r in pools.rows])
        same = [t["dialogue_id"][c] == t["dialogue_id"][q] for q, r in enumerate(pools.rows) for c in r]
        rest = np.concatenate([r[k:] for r, k in zip(pools.rows, pools.n_top, strict=True)] or [np.zeros(0)])
        log.info("%s pools: %d with candidates (%.1f each on average), %d empty; %.1f%% of the candidates from the "
                 "example's own dialogue; %d distinct rows among the non-top candidates", split,
                 int((sizes > 0).sum()), float(sizes[sizes > 0].mean()) if (sizes > 0).any() else 0.0,
                 int((sizes == 0).sum()), 100 * float(np.mean(same)) if same else 0.0, len(np.unique(rest)))
        write_parquet(groups.to_table(t["example_id"], pools), f"data/groups/{split}.parquet")

if __name__ == "__main__":
    run_stage(main)
