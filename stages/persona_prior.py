"""The bilinear selection prior (pipeline.preprocessing.persona_prior) -> data/persona_prior/.

    python -m stages.persona_prior            # after dvc repro persona_labels

Writes {split}.parquet (example_id, bilinear_logits per persona sentence), selector.npz (W, s,
the ridge: what ``python -m pipeline.chat`` scores a typed query with) and
reports/persona_prior.json (every ridge's accuracy, the chosen one, retrieval beside it).
Read by PEDNet with ``selection_prior: bilinear`` (the ``pednet_prior_bilinear`` run). Not a
DVC stage: no stage of dvc.yaml reads it, and it re-encodes every query and persona sentence
and fits seven ridges (about 5 min on the shared slice, 2-core AMD EPYC), which ``dvc repro``
would pay for nothing.
"""

from __future__ import annotations

if __name__ == "__main__":  # as persona_labels: the encoder's bytes independent of the CPU
    from pipeline.preprocessing.portable import pin

    pin()

import argparse
import logging
from pathlib import Path

import numpy as np

from pipeline.io import (
    InputError,
    atomic_dir,
    load_params,
    read_parquet,
    run_stage,
    write_json,
    write_parquet,
)
from pipeline.preprocessing import persona_labels as pl
from pipeline.preprocessing import persona_prior as pp
from pipeline.schema import SPLITS

log = logging.getLogger(__name__)

OUT = "data/persona_prior"
REPORT = "reports/persona_prior.json"
SELECTOR = "selector.npz"


def load_split(data: Path, split: str) -> dict[str, list]:
    prepared = read_parquet(data / "prepared" / f"{split}.parquet", columns=["example_id", "query", "persona"])
    path = data / "persona_labels" / f"{split}.parquet"
    labels = read_parquet(path, columns=["example_id", "optimal_persona"]).to_pydict()
    cols = prepared.to_pydict()
    if labels["example_id"] != cols["example_id"]:
        raise InputError(path, f"example_id differs from data/prepared/{split}.parquet (rerun: dvc repro persona_labels)")
    return {**cols, "label": labels["optimal_persona"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--out", type=Path, default=Path(OUT))
    parser.add_argument("--report", type=Path, default=Path(REPORT))
    args = parser.parse_args(argv)
    p = load_params("persona_labels")
    splits = {s: load_split(args.data, s) for s in SPLITS}
    sentences = sorted({x for c in splits.values() for q, ps in zip(c["query"], c["persona"], strict=True)
                        for x in (q, *ps)})
    enc = pl.load_encoder(p["encoder"], p["layer"], p["max_length"], precision=p.get("precision", "float32"))
    log.info("encoding %d distinct queries and persona sentences (%s on %s)", len(sentences), enc.precision, enc.device)
    vectors = pl.unit(pl.encode(enc, sentences, p["batch_size"], desc="encode (persona prior)")).astype(np.float64)
    index = {s: i for i, s in enumerate(sentences)}
    turns = {s: pp.Turns.build(c["query"], c["persona"], c["label"], index) for s, c in splits.items()}
    w, scale, report = pp.select(vectors, turns)
    chosen = report["chosen"]
    log.info("bilinear prior: ridge %g, labelled-turn accuracy valid %.4f / test %.4f (retrieval %.4f / %.4f)",
             chosen["ridge"], chosen["valid"], chosen["test"], report["retrieval"]["valid"], report["retrieval"]["test"])
    with atomic_dir(args.out) as tmp:
        for s, c in splits.items():
            write_parquet(pp.to_table(c["example_id"], pp.prior_logits(vectors, w, scale, turns[s])),
                          tmp / f"{s}.parquet")
        np.savez(tmp / SELECTOR, w=w, scale=scale, ridge=chosen["ridge"])
    labelled = {s: int((t.label >= 0).sum()) for s, t in turns.items()}
    write_json({**report, "labelled_turns": labelled, "encoder": p["encoder"]}, args.report)


if __name__ == "__main__":
    run_stage(main)
