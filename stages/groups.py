"""Stage `groups`: BM25 candidate pools of every training pair -> data/groups/train.parquet."""

from __future__ import annotations

import logging

import numpy as np

from pipeline import groups
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet

log = logging.getLogger(__name__)

PREPARED = "data/prepared/train.parquet"
OUT = "data/groups/train.parquet"


def main() -> None:
    p = load_params("groups")
    for key in ("top", "bottom", "context_tokens"):
        if not isinstance(p[key], int) or p[key] < 0:
            raise InputError("params.yaml", f"groups.{key} must be a non-negative integer, got {p[key]!r}")
    train = read_parquet(PREPARED, columns=["example_id", "history", "query"]).to_pydict()
    contexts = [groups.gcl_context(h, q, p["context_tokens"]) for h, q in zip(train["history"], train["query"], strict=True)]
    log.info("read %s: %d training pairs, contexts of %.1f tokens on average (last %d kept)",
             PREPARED, len(contexts), float(np.mean([len(c) for c in contexts])) if contexts else 0.0,
             p["context_tokens"])
    pools = groups.bm25_pools(contexts, p["top"], p["bottom"], p["k1"], p["b"])
    sizes = np.array([len(r) for r in pools.rows])
    bottoms = np.concatenate([r[t:] for r, t in zip(pools.rows, pools.n_top, strict=True)] or [np.zeros(0)])
    log.info("pools: %d with candidates (%.1f each on average), %d empty; %d distinct training rows "
             "among the bottom candidates", int((sizes > 0).sum()), float(sizes[sizes > 0].mean()) if (sizes > 0).any()
             else 0.0, int((sizes == 0).sum()), len(np.unique(bottoms)))
    write_parquet(groups.to_table(train["example_id"], pools), OUT)


if __name__ == "__main__":
    run_stage(main)
