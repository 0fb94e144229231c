"""Where should GCL's negatives come from? The options of ``groups.negatives`` side by side.

    python -m stages.negative_options [--out reports/probes/negative_options.json]

For every option (``bottom``: the lowest-BM25 contexts, the authors'; ``random``; ``middle``:
ranked around the query's median BM25 score), with params.yaml's other ``groups`` settings,
this builds the training pools, scores them with the ``score_groups`` scorer and selects the
groups exactly as the ``groups`` -> ``score_groups`` -> ``select_groups`` stages do, and
reports the negatives' statistics (``stages.select_groups.group_stats``): distinct
responses and contexts, the share of the most frequent ones (a fixed handful of greetings
shows there), and the s distribution (s > 0: a "negative" the matcher calls a match).
Not a DVC stage (like stages.gcl_ablations): an analysis over data/prepared and
checkpoints/matcher (run `dvc repro matcher` first); the option it argues for is
params.yaml's default.
"""

from __future__ import annotations

import argparse
import logging

from pipeline.contrastive import groups, matching
from pipeline.contrastive.gcl import select_groups
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_json
from stages.groups import DEFAULTS, pools_of
from stages.select_groups import group_stats

log = logging.getLogger(__name__)

PREPARED = "data/prepared/train.parquet"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m stages.negative_options", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--out", default="reports/probes/negative_options.json")
    parser.add_argument("--matcher", default="checkpoints/matcher")
    args = parser.parse_args(argv)
    p = {**DEFAULTS, **load_params("groups")}
    scorer = load_params("score_groups").get("scorer", "msn")
    if scorer == "msn":
        raise InputError("params.yaml", "score_groups.scorer: msn; this probe scores with the matcher stage's "
                                        "rankers (minilm, minilm_zeroshot, bm25)")
    k = load_params("gcl")["k"]
    selection = load_params("select_groups").get("selection", "msn")
    prepared = read_parquet(PREPARED).to_pydict()
    out: dict = {"scorer": scorer, "matcher": matching.read_calibration(args.matcher)["config"], "k": k,
                 "min_negative_tokens": p["min_negative_tokens"], "same_dialogue": p["same_dialogue"],
                 "options": {}}
    for option in groups.NEGATIVES:
        pools = pools_of(p, prepared, negatives=option)
        table = matching.score_pools(scorer, args.matcher, PREPARED, groups.to_table(prepared["example_id"], pools))
        stats = group_stats(select_groups(table, k, selection), prepared)
        out["options"][option] = {key: v for key, v in stats.items() if key.startswith("negative")}
        log.info("%s: %s", option, out["options"][option])
    write_json(out, args.out)
    log.info("wrote %s", args.out)
    return out


if __name__ == "__main__":
    run_stage(main)
