"""The group of every training pair: ``python -m stages.select_groups``.

Reads data/msn_scores/train.parquet and params `select_groups` + `gcl.k`; writes
data/scored_groups/train.parquet (schema.SCORED_GROUPS) and reports/scored_groups.json
(group sizes and how many "best" candidates MSN rates as real positives, s > 0).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.gcl import select_groups
from pipeline.io import load_params, read_parquet, run_stage, write_json, write_parquet

log = logging.getLogger(__name__)


def group_stats(table) -> dict:
    def flat(col):
        return np.concatenate([np.asarray(x, dtype=np.float64) for x in table.column(col).to_pylist()] or [[]])

    pos = flat("positive_scores")
    neg = flat("negative_scores")
    n = table.num_rows
    sampled_pos = pos[pos < 1.0] if len(pos) else pos  # the original pairs have s = 1
    return {
        "examples": n,
        "positives_per_example": round(len(pos) / n, 3),
        "negatives_per_example": round(len(neg) / n, 3),
        "positive_s_mean": round(float(pos.mean()), 4) if len(pos) else None,
        "negative_s_mean": round(float(neg.mean()), 4) if len(neg) else None,
        "sampled_positives_with_s_gt_0": round(float((sampled_pos > 0).mean()), 4) if len(sampled_pos) else None,
        "negatives_with_s_le_0": round(float((neg <= 0).mean()), 4) if len(neg) else None,
    }


def main(data_dir: str | Path = "data") -> dict:
    p = load_params("select_groups")
    k = load_params("gcl")["k"]
    data_dir = Path(data_dir)
    table = select_groups(read_parquet(data_dir / "msn_scores" / "train.parquet"), k, p["selection"], p["seed"])
    write_parquet(table, data_dir / "scored_groups" / "train.parquet")
    stats = {"selection": p["selection"], "k": k, **group_stats(table)}
    log.info("groups: %s", stats)
    write_json(stats, Path("reports") / "scored_groups.json")
    return stats


if __name__ == "__main__":
    run_stage(main)
