"""Stage `evaluate` (one per model, dvc.yaml `foreach`): every metric of both papers on a
model's test generations -> reports/metrics/<model>.json (DVC metrics, fractions).

    python -m stages.evaluate <model>
"""

from __future__ import annotations

import argparse
import logging
import time

from pipeline import metrics
from pipeline.io import InputError, load_params, run_stage, write_json

log = logging.getLogger(__name__)

TRAIN = "data/prepared/train.parquet"
VECTORS = "data/embeddings/vectors.parquet"


def generations_path(model: str) -> str:
    return f"reports/generations/{model}.parquet"


def metrics_path(model: str) -> str:
    return f"reports/metrics/{model}.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__)
    parser.add_argument("model", help="reads reports/generations/<model>.parquet")
    args = parser.parse_args(argv)
    p = load_params("evaluate")
    if p["embedding_a"] <= 0:
        raise InputError("params.yaml", f"evaluate.embedding_a must be > 0, got {p['embedding_a']}")

    start = time.perf_counter()
    gen = metrics.read_generations(generations_path(args.model))
    idf = metrics.load_idf(metrics.PERSONA_IDF)
    stats = metrics.load_training_stats(TRAIN)
    vectors = metrics.load_word_vectors(VECTORS, stats, p["embedding_a"])
    log.info(
        "%s: %d generations; idf table %s (%d words, %.5f for others); %d word vectors",
        args.model, len(gen["hypothesis"]), metrics.PERSONA_IDF, len(idf), p["idf_missing"], len(vectors.index),
    )  # fmt: skip
    result = metrics.evaluate(
        hypotheses=gen["hypothesis"],
        references=gen["reference"],
        queries=gen["context"],
        personas=gen["persona"],
        idf=idf,
        stats=stats,
        vectors=vectors,
        idf_missing=p["idf_missing"],
    )
    log.info(
        "%s: %d empty hypotheses; embedding metrics over %d examples, coherence over %d "
        "(the rest have no word vector in the reference / query)",
        args.model, result["n_empty_hypotheses"], result["n_emb_examples"], result["n_coherence_examples"],
    )  # fmt: skip
    out = {k: result[k] for k in metrics.METRIC_KEYS}
    out["n_examples"] = result["n_examples"]
    write_json(out, metrics_path(args.model))
    log.info("%s: %s (%.1f s)", args.model, ", ".join(f"{k}={out[k]:.4f}" for k in metrics.METRIC_KEYS),
             time.perf_counter() - start)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
