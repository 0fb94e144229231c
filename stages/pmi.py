"""Stage `pmi`: specific words of every bot turn and X~ -> data/pmi/{split}.parquet."""

from __future__ import annotations

import logging
import time

from pipeline import pmi
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet
from pipeline.schema import SPLITS

log = logging.getLogger(__name__)

PREPARED = "data/prepared"
OUT = "data/pmi"
COLUMNS = ["example_id", "query", "persona"]


def main() -> None:
    p = load_params("pmi")
    statistics = p.get("statistics", pmi.STATISTICS[0])
    if statistics not in pmi.STATISTICS:
        raise InputError("params.yaml", f"pmi.statistics: expected one of {', '.join(pmi.STATISTICS)}, got {statistics!r}")
    start = time.perf_counter()
    train = read_parquet(f"{PREPARED}/train.parquet", columns=[*COLUMNS, "dialogue_id"]).to_pydict()
    groups = pmi.left_out_groups(statistics, train["dialogue_id"], train["persona"])
    stats = pmi.fit(train["query"], train["persona"], groups)
    kept = int((stats.context_count >= p["min_count"]).sum())
    log.info(
        "PMI statistics from %d training examples: %d context words (%d with >= %d occurrences), "
        "%d persona words, %d co-occurring pairs; training examples scored with statistics=%s (%.1fs)",
        stats.num_examples,
        len(stats.context_vocab),
        kept,
        p["min_count"],
        len(stats.persona_vocab),
        len(stats.keys),
        statistics,
        time.perf_counter() - start,
    )
    for split in SPLITS:
        rows = (
            train
            if split == "train"
            else read_parquet(f"{PREPARED}/{split}.parquet", columns=COLUMNS).to_pydict()
        )
        # valid/test dialogues are not in the statistics: nothing of theirs to leave out
        dialogue_ids = groups if split == "train" else None
        words, scores = pmi.specific_words(
            stats, rows["query"], rows["persona"], p["threshold"], p["max_words"], p["min_count"], dialogue_ids
        )
        n = len(words)
        with_any = sum(1 for w in words if w)
        total = sum(len(w) for w in words)
        log.info(
            "%s: %d examples, %.1f%% with >= 1 specific word, %.2f specific words per example "
            "(%.2f among those with any)",
            split,
            n,
            100.0 * with_any / max(n, 1),
            total / max(n, 1),
            total / max(with_any, 1),
        )
        write_parquet(
            pmi.to_table(rows["example_id"], rows["query"], words, scores), f"{OUT}/{split}.parquet"
        )


if __name__ == "__main__":
    run_stage(main)
