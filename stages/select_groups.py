"""The group of every training pair: ``python -m stages.select_groups``.

Reads data/msn_scores/{train,valid}.parquet and params `select_groups` + `gcl.k`; writes
data/scored_groups/{train,valid}.parquet (schema.SCORED_GROUPS) and reports/scored_groups.json
(group sizes; per side the share of candidates from the example's own dialogue, distinct
candidate responses and contexts, and the s distribution).

``--k K`` (K > gcl.k; GCL Figure 3's larger groups, by hand, not a dvc stage) selects K per
side into data/scored_groups_k<K>/ and reports/scored_groups_k<K>.json instead; then
``stages.reference_scores <run> --k K`` and ``stages.train_gcl`` of a variant with gcl.k: K.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from pipeline.contrastive.gcl import ORIGINAL, RESPONSE_SIDE, groups_dir, select_groups
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_json, write_parquet

log = logging.getLogger(__name__)


def _top_share(values: list[str], n: int) -> float:
    """The share of ``values`` taken by its n most frequent distinct values."""
    return round(sum(c for _, c in Counter(values).most_common(n)) / max(len(values), 1), 4)


def group_stats(table, prepared: dict) -> dict:
    """Group sizes; per side and kind: the share of pairs whose candidate comes from the
    example's own dialogue (or is its own context/response text), the distinct candidate
    responses and contexts, the share of the 3 most frequent responses and of the 10 most
    frequent contexts, and the s distribution."""
    dialogue = prepared["dialogue_id"]
    response = prepared["response"]
    context = [" ".join([*h, q]) for h, q in zip(prepared["history"], prepared["query"], strict=True)]
    cols = table.to_pydict()
    n = table.num_rows
    out: dict = {"examples": n}
    for kind in ("positive", "negative"):
        per_side: dict[str, dict[str, list]] = {}
        for row in range(n):
            for c, r, s, side in zip(cols[f"{kind}_context_rows"][row], cols[f"{kind}_response_rows"][row],
                                     cols[f"{kind}_scores"][row], cols[f"{kind}_sides"][row], strict=True):
                if side == ORIGINAL:
                    continue
                cand = r if side == RESPONSE_SIDE else c  # the row the candidate came from
                d = per_side.setdefault(side, {"s": [], "same": [], "copy": [], "resp": [], "ctx": []})
                d["s"].append(s)
                d["same"].append(dialogue[cand] == dialogue[row])
                d["copy"].append(response[r] == response[row] if side == RESPONSE_SIDE else context[c] == context[row])
                d["resp"].append(response[r])
                d["ctx"].append(context[c])
        out[f"{kind}s_per_example"] = round(sum(len(x) for x in cols[f"{kind}_scores"]) / max(n, 1), 3)
        for side, d in sorted(per_side.items()):
            s = np.asarray(d["s"], dtype=np.float64)
            out[f"{kind}_{side}"] = {
                "pairs": len(s),
                "same_dialogue": round(float(np.mean(d["same"])), 4),
                "copies_own_text": round(float(np.mean(d["copy"])), 4),
                "distinct_responses": len(set(d["resp"])),
                "distinct_contexts": len(set(d["ctx"])),
                # the greeting concentration of the authors' pools: 89% of response-side negatives
                # were 3 sentences, 73% of context-side ones 10 contexts
                "top3_responses_share": _top_share(d["resp"], 3),
                "top10_contexts_share": _top_share(d["ctx"], 10),
                "s_mean": round(float(s.mean()), 4),
                "s_quantiles": {q: round(float(np.quantile(s, float(q))), 4) for q in ("0.1", "0.25", "0.5", "0.75", "0.9")},
                "s_gt_0": round(float((s > 0).mean()), 4),
            }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k", type=int, default=None,
                        help="a wider selection beside the DAG's (GCL Figure 3's k above params gcl.k): writes "
                             "data/scored_groups_k<K>/ and reports/scored_groups_k<K>.json")
    parser.add_argument("--data", default="data")
    args = parser.parse_args([] if argv is None else argv)
    p = load_params("select_groups")
    base_k = load_params("gcl")["k"]
    if args.k is not None and args.k <= base_k:
        raise InputError("--k", f"{args.k}: the DAG's groups (params gcl.k = {base_k}) already hold every k <= "
                                f"{base_k} (a run with a smaller gcl.k reads their first k)")
    k = base_k if args.k is None else args.k
    data_dir = Path(args.data)
    out_dir = groups_dir(data_dir, args.k)
    stats: dict = {"selection": p["selection"], "k": k}
    for split in ("train", "valid"):
        table = select_groups(read_parquet(data_dir / "msn_scores" / f"{split}.parquet"), k, p["selection"], p["seed"])
        write_parquet(table, out_dir / f"{split}.parquet")
        prepared = read_parquet(data_dir / "prepared" / f"{split}.parquet",
                                columns=["dialogue_id", "history", "query", "response"]).to_pydict()
        split_stats = group_stats(table, prepared)
        stats.update(split_stats) if split == "train" else stats.update({"valid": split_stats})
    log.info("groups: %s", stats)
    write_json(stats, Path("reports") / f"{out_dir.name}.json")
    return stats


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))
