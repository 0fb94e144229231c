"""Stage `pmi`: specific words of every bot turn and X~ -> data/pmi/{split}.parquet, and
their coverage per split -> reports/pmi.json."""

from __future__ import annotations

import logging
import time

from pipeline.io import InputError, load_params, read_parquet, run_stage, write_json, write_parquet
from pipeline.preprocessing import pmi
from pipeline.schema import SPLITS

log = logging.getLogger(__name__)

PREPARED = "data/prepared"
OUT = "data/pmi"
REPORT = "reports/pmi.json"
COLUMNS = ["example_id", "query", "persona"]


def coverage(words: list[list[str]]) -> dict:
    """How many turns have specific words, and how many (the issue's calibration targets)."""
    n = len(words)
    with_any = sum(1 for w in words if w)
    total = sum(len(w) for w in words)
    return {
        "examples": n,
        "with_any": round(with_any / max(n, 1), 4),
        "per_turn": round(total / max(n, 1), 3),
        "per_turn_among_any": round(total / max(with_any, 1), 3),
        "max": max((len(w) for w in words), default=0),
    }


def main() -> None:
    p = load_params("pmi")
    statistics = p.get("statistics", pmi.STATISTICS[0])
    if statistics not in pmi.STATISTICS:
        raise InputError("params.yaml", f"pmi.statistics: expected one of {', '.join(pmi.STATISTICS)}, got {statistics!r}")
    log_base = pmi.LOG_BASES[p.get("log_base", "e")]
    start = time.perf_counter()
    rows = {
        split: read_parquet(f"{PREPARED}/{split}.parquet",
                            columns=[*COLUMNS, "dialogue_id"] if split == "train" else COLUMNS).to_pydict()
        for split in SPLITS
    }
    train = rows["train"]
    if statistics == "transductive":  # every split's inputs (no responses), each example in its own counts
        counted = [rows[s] for s in SPLITS]
        groups = None
        stats = pmi.fit([q for r in counted for q in r["query"]], [x for r in counted for x in r["persona"]])
    else:
        groups = pmi.left_out_groups(statistics, train["dialogue_id"], train["persona"])
        stats = pmi.fit(train["query"], train["persona"], groups)
    kept = int((stats.context_count >= p["min_count"]).sum())
    log.info(
        "PMI statistics from %d examples: %d context words (%d with >= %d occurrences), "
        "%d persona words, %d co-occurring pairs; statistics=%s, log base %s (%.1fs)",
        stats.num_examples, len(stats.context_vocab), kept, p["min_count"], len(stats.persona_vocab),
        len(stats.keys), statistics, p.get("log_base", "e"), time.perf_counter() - start,
    )
    report = {"statistics": statistics, "log_base": p.get("log_base", "e"), "threshold": p["threshold"],
              "max_words": p["max_words"], "min_count": p["min_count"], "splits": {}}
    for split in SPLITS:
        r = rows[split]
        # valid/test dialogues are not in leave-out statistics: nothing of theirs to leave out
        dialogue_ids = groups if split == "train" else None
        words, scores = pmi.specific_words(
            stats, r["query"], r["persona"], p["threshold"], p["max_words"], p["min_count"], dialogue_ids, log_base
        )
        cov = report["splits"][split] = coverage(words)
        log.info("%s: %d examples, %.1f%% with >= 1 specific word, %.2f per example (%.2f among those with any)",
                 split, cov["examples"], 100 * cov["with_any"], cov["per_turn"], cov["per_turn_among_any"])
        write_parquet(pmi.to_table(r["example_id"], r["query"], words, scores), f"{OUT}/{split}.parquet")
    write_json(report, REPORT)


if __name__ == "__main__":
    run_stage(main)
