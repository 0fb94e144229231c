"""Rankers for GCL's candidate pairs besides MSN: ``python -m stages.matcher`` (dvc stage
``matcher``).

Reads params ``matcher`` (and ``msn.seed`` / ``msn.eval_candidates`` / ``msn.eval_examples``,
so that the valid candidates are MSN's own) and data/prepared/{train,valid}.parquet.
Fine-tunes the MiniLM bi-encoder on the training pairs and writes checkpoints/matcher/
(model and tokenizer by ``save_pretrained``, calibration.json with the Platt maps of
``minilm``, ``minilm_zeroshot`` and ``bm25``) and reports/matchers.json: R10@1, R10@2,
R10@5 and MRR of bm25, minilm_zeroshot, minilm_finetuned (and msn, from reports/msn.json
when it exists) on the same valid candidates, seconds, and the best ranker.

Not byte-identical across thread counts or CPUs: the MiniLM fine-tune's float sums depend
on how they are split; equal within seed noise (tests/test_determinism.py; README "Determinism").
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from pipeline.contrastive.matching import (
    CALIBRATION,
    BM25Ranker,
    MatcherConfig,
    MiniLMMatcher,
    bm25_candidate_scores,
    calibration_record,
    eval_candidates,
    evaluate_scores,
    fine_tune,
    load_pairs,
    minilm_candidate_scores,
)
from pipeline.io import InputError, atomic_dir, load_params, run_stage, write_json

log = logging.getLogger(__name__)


def msn_candidate_params(msn: dict) -> tuple[int, int, int | None]:
    """(seed, count, limit) exactly as MSNTrainConfig reads them (its defaults included)."""
    from pipeline.contrastive.msn import MSNTrainConfig

    cfg = MSNTrainConfig.from_params(msn or {})
    return cfg.seed, cfg.eval_candidates, cfg.eval_examples


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - start, 1)


def main(params: dict | None = None, msn_params: dict | None = None, data_dir: str | Path = "data",
         out_dir: str | Path = ".") -> dict:
    """``params`` / ``msn_params`` override the params.yaml sections (tests, smoke runs)."""
    cfg = MatcherConfig.from_params(load_params("matcher") if params is None else params)
    msn = load_params("msn") if msn_params is None else msn_params
    seed, count, limit = msn_candidate_params(msn)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    train = load_pairs(data_dir / "prepared" / "train.parquet", cfg.context_tokens)
    valid = load_pairs(data_dir / "prepared" / "valid.parquet", cfg.context_tokens)
    if len(valid) < count or len(train) < 2:
        raise InputError(data_dir / "prepared", f"{len(train)} train / {len(valid)} valid pairs: too few to rank "
                         f"{count} candidates")
    cands = eval_candidates(valid.responses, count, seed, limit)
    log.info("matcher: %d train pairs; valid: %d contexts x %d candidates (msn seed %d)", len(train), len(cands),
             count, seed)
    report: dict = {"candidates": {"count": count, "examples": len(cands), "seed": seed}}
    platts = {}

    def record(name: str, scores, seconds: dict):
        metrics, platt = evaluate_scores(scores, cands)
        platts[name] = platt
        report[name] = {**metrics, **seconds, "platt": {"a": round(platt.a, 6), "b": round(platt.b, 6)}}
        log.info("%s: %s (q = sigmoid(%.3f x + %.3f))", name, " ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
                 platt.a, platt.b)

    ranker, fit_s = _timed(lambda: BM25Ranker.fit([r.split() for r in train.responses], cfg.bm25_k1, cfg.bm25_b))
    scores, eval_s = _timed(lambda: bm25_candidate_scores(ranker, valid, cands))
    record("bm25", scores, {"train_seconds": fit_s, "eval_seconds": eval_s})

    matcher = MiniLMMatcher(cfg.encoder, cfg.max_context_length, cfg.max_response_length, device=cfg.device_name(),
                            precision=cfg.precision, batch_size=cfg.encode_batch_size)
    scores, eval_s = _timed(lambda: minilm_candidate_scores(matcher, valid, cands))
    record("minilm_zeroshot", scores, {"train_seconds": 0.0, "eval_seconds": eval_s})

    stats = fine_tune(matcher, train, cfg.fine_tune_config())
    scores, eval_s = _timed(lambda: minilm_candidate_scores(matcher, valid, cands))
    record("minilm_finetuned", scores, {"train_seconds": stats["train_seconds"], "eval_seconds": eval_s,
                                        "steps": stats["steps"], "train_loss": round(stats["train_loss"], 4),
                                        "train_acc": round(stats["train_acc"], 4)})
    platts["minilm"] = platts["minilm_finetuned"]

    msn_report = out_dir / "reports" / "msn.json"
    if msn_report.exists():
        m = json.loads(msn_report.read_text(encoding="utf-8"))
        report["msn"] = {k: m[k] for k in (*(f"R{count}@{i}" for i in (1, 2, 5)), "MRR", "train_seconds") if k in m}
    key = f"R{count}@1"
    rankers = [k for k in ("msn", "bm25", "minilm_zeroshot", "minilm_finetuned") if key in report.get(k, {})]
    report["best"] = max(rankers, key=lambda k: (report[k][key], report[k]["MRR"]))
    report["best_scorer"] = {"minilm_finetuned": "minilm"}.get(report["best"], report["best"])  # score_groups.scorer

    with atomic_dir(out_dir / "checkpoints" / "matcher") as tmp:
        matcher.save(tmp)
        (tmp / CALIBRATION).write_text(json.dumps(calibration_record(cfg, platts), indent=2, sort_keys=True) + "\n",
                                       encoding="utf-8")
    write_json(report, out_dir / "reports" / "matchers.json")
    return report


if __name__ == "__main__":
    run_stage(main)
