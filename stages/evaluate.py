"""Stage `evaluate` (one per run and seed, dvc.yaml `foreach`): every metric of both papers,
and the shuffled-persona control, on one set of test generations (DVC metrics, fractions);
for a model's generations also the shuffled-context diagnostic ``query_gain`` (nats/token).

    python -m stages.evaluate <run> --seed K   reports/generations/<run>/seedK.parquet
                                                -> reports/metrics/<run>/seedK.json
    python -m stages.evaluate <run>            reports/generations/<run>/control.parquet
                                                -> reports/metrics/<run>/control.json
                                                (the controls of stages.controls: gold, constant)
"""

from __future__ import annotations

import argparse
import logging
import re
import time

from pipeline.evaluation import metrics
from pipeline.io import InputError, load_params, run_stage, write_json

log = logging.getLogger(__name__)

TRAIN = "data/prepared/train.parquet"
VECTORS = "data/embeddings/vectors.parquet"
CONTROL = "control"  # the file name of a run without seeds (gold, constant)
_RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def file_stem(seed: int | None) -> str:
    """``seed<K>`` for a trained run's seed K, ``control`` for a deterministic control."""
    return CONTROL if seed is None else f"seed{seed}"


def generations_path(run: str, seed: int | None = None) -> str:
    return f"reports/generations/{run}/{file_stem(seed)}.parquet"


def metrics_path(run: str, seed: int | None = None) -> str:
    return f"reports/metrics/{run}/{file_stem(seed)}.json"


def check_run_name(run: str) -> str:
    """Run names become directory names: no slashes, no dot-dot, no empty name."""
    if not _RUN_NAME.fullmatch(run) or ".." in run:
        raise InputError("command line", f"run name {run!r}: letters, digits, '_', '-', '.' only")
    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("run", help="reads reports/generations/<run>/")
    parser.add_argument("--seed", type=int, default=None,
                        help="training seed K (seedK.parquet); omit for a control (control.parquet)")  # fmt: skip
    args = parser.parse_args(argv)
    run = check_run_name(args.run)
    if args.seed is not None and args.seed < 0:
        raise InputError("command line", f"--seed must be >= 0, got {args.seed}")
    p = load_params("evaluate")
    if p["embedding_a"] <= 0:
        raise InputError("params.yaml", f"evaluate.embedding_a: expected a number > 0, got {p['embedding_a']!r}")

    start = time.perf_counter()
    source = generations_path(run, args.seed)
    gen = metrics.read_generations(source)
    try:
        shuffled = metrics.shuffled_personas(gen["example_id"], gen["persona"])
    except ValueError as e:
        raise InputError(source, str(e)) from None
    idf = metrics.load_idf(metrics.PERSONA_IDF)
    stats = metrics.load_training_stats(TRAIN)
    vectors = metrics.load_word_vectors(VECTORS, stats, p["embedding_a"])
    log.info(
        "%s: %d generations; idf table %s (%d words, %.5f for others); %d word vectors",
        source, len(gen["hypothesis"]), metrics.PERSONA_IDF, len(idf), p["idf_missing"], len(vectors.index),
    )  # fmt: skip
    result = metrics.evaluate(
        hypotheses=gen["hypothesis"],
        references=gen["reference"],
        queries=gen["context"],
        personas=gen["persona"],
        shuffled_personas=shuffled,
        idf=idf,
        stats=stats,
        vectors=vectors,
        idf_missing=p["idf_missing"],
        log_p_own=gen["log_p_own"],
        log_p_shuffled=gen["log_p_shuffled"],
    )
    log.info(
        "%s: %d empty hypotheses; embedding metrics over %d examples, coherence over %d "
        "(the rest have no word vector in the reference / query)",
        source, result["n_empty_hypotheses"], result["n_emb_examples"], result["n_coherence_examples"],
    )  # fmt: skip
    out = {k: result[k] for k in (*metrics.METRIC_KEYS, *metrics.DEGENERACY_KEYS)}
    # the collapse diagnostic: only where the generations carry log-probs (not the controls)
    out.update({k: result[k] for k in metrics.QUERY_KEYS if k in result})
    out["n_examples"] = result["n_examples"]
    write_json(out, metrics_path(run, args.seed))
    if "query_gain" not in out:
        log.info("%s: no log_p_own / log_p_shuffled (a control, or generated before the columns "
                 "existed): no query_gain", source)
    log.info("%s: %s (%.1f s)", source,
             ", ".join(f"{k}={out[k]:.4f}" for k in (*metrics.METRIC_KEYS, *metrics.DEGENERACY_KEYS,
                                                      *metrics.QUERY_KEYS) if k in out),
             time.perf_counter() - start)  # fmt: skip


if __name__ == "__main__":
    run_stage(main)
