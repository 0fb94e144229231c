"""Stage `persona_labels`: optimal persona of every bot turn -> data/persona_labels/{split}.parquet."""

from __future__ import annotations

if __name__ == "__main__":  # as a stage, before NumPy/torch load: bytes independent of the CPU
    from pipeline.preprocessing.portable import pin

    pin()

import logging

from pipeline.io import InputError, load_params, read_parquet, run_stage, write_json, write_parquet
from pipeline.preprocessing import persona_labels as pl
from pipeline.schema import SPLITS

log = logging.getLogger(__name__)

PREPARED = "data/prepared"
OUT = "data/persona_labels"
REPORT = "reports/persona_labels.json"
COLUMNS = ["example_id", "query", "response", "persona"]


def main() -> None:
    p = load_params("persona_labels")
    for key in ("batch_size", "max_length"):
        if not isinstance(p[key], int) or p[key] < 1:
            raise InputError("params.yaml", f"persona_labels.{key}: expected an integer >= 1, got {p[key]!r}")
    splits = {s: read_parquet(f"{PREPARED}/{s}.parquet", columns=COLUMNS).to_pydict() for s in SPLITS}
    for s, cols in splits.items():
        log.info("read %s/%s.parquet: %d examples", PREPARED, s, len(cols["example_id"]))
    enc = pl.load_encoder(p["encoder"], p["layer"], p["max_length"], precision=p.get("precision", "float32"))
    log.info("encoder %s, hidden_states[%d], %s on %s", p["encoder"], p["layer"], enc.precision, enc.device)
    results = pl.label_splits(enc, splits, p["none_threshold"], p["batch_size"])
    report = {}
    for s in SPLITS:
        labels, sims, query_sims = results[s]
        report[s] = pl.summary(labels, sims)
        log.info(
            "%s: %d examples, None label %.1f%% (best cosine < %.3f), mean best cosine %.3f",
            s, report[s]["n_examples"], 100 * report[s]["none_share"], p["none_threshold"],
            report[s]["mean_best_similarity"],
        )
        write_parquet(pl.to_table(splits[s]["example_id"], labels, sims, query_sims), f"{OUT}/{s}.parquet")
    write_json(report, REPORT)


if __name__ == "__main__":
    run_stage(main)
