"""Decode the test split with MMI (Li et al. 2016a; pipeline/learners/mmi.py):
``python -m stages.generate_mmi <run> --seed K`` (dvc stage ``generate_mmi@<run>-<K>``;
runs seq2seq_history_mmi (MMI-bidi) and seq2seq_history_mmi_antilm (MMI-antiLM)).

Seed K's forward model is the reference run's (``<run>.reference``, default
seq2seq_history: checkpoints/seq2seq_history/seed<K>/best.pt); MMI-bidi adds the backward
Seq2Seq (checkpoints/<reference>_backward/seed<K>/best.pt), MMI-antiLM the response LM
(checkpoints/<reference>_lm/seed<K>/best.pt). Nothing trains. Reads params `generate`,
`mmi` and `<run>` (its `mmi` keys override); writes reports/generations/<run>/seed<K>.parquet
as stages.generate does (the log_p_own / log_p_shuffled diagnostic is the forward model's).
With ``mmi.tune`` (MMI-bidi), λ and γ are first chosen on validation BLEU (a seeded valid
subset; pipeline.learners.mmi.tune) and the grid is written to reports/mmi_tuning/<run>/seed<K>.json.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipeline import schema
from pipeline.dataset import Vocab, load_split
from pipeline.decode import QUERY_SHUFFLE_SEED, derangement, generate_rows, greedy, query_log_probs
from pipeline.io import InputError, load_params, run_stage, write_json, write_parquet
from pipeline.learners.mmi import AntiLM, Bidi, MMIConfig, reply_stats, tune
from pipeline.params_schema import validate_run
from pipeline.train import autocast, load_trained, run_dirs
from stages.generate import generations_path

log = logging.getLogger(__name__)


def tuning_path(run: str, seed: int) -> Path:
    return Path("reports/mmi_tuning") / run / f"seed{seed}.json"


def tune_on_valid(model: Bidi, vocab: Vocab, data_dir: Path, p: dict, device: torch.device,
                  args: argparse.Namespace) -> tuple[float, float]:
    """λ and γ by validation BLEU on ``mmi.tune_examples`` seeded valid rows (mmi.tune);
    every grid point written to reports/mmi_tuning/<run>/seed<K>.json."""
    valid = load_split("valid", vocab, type(model.forward_model).data_config(model.forward_model.params), data_dir)
    rng = np.random.default_rng(args.seed)
    index = np.sort(rng.choice(len(valid), size=min(model.cfg.tune_examples, len(valid)), replace=False)).tolist()
    batches = [valid.collate(index[i : i + p["batch_size"]]) for i in range(0, len(index), p["batch_size"])]
    references = [valid.texts["response"][i] for i in index]
    start = time.perf_counter()
    lam, gamma, table = tune(model, (b.to(device) for b in batches), references, vocab.decode)
    # the forward model's own greedy replies on the same rows: what reranking is compared with
    plain = [vocab.decode(t) for b in batches for t in greedy(model.forward_model, b.to(device), p["max_len"]).tokens.tolist()]
    log.info("%s: lambda %.2f, length weight %.2f by validation BLEU on %d valid rows (%d grid points, %.0f s)",
             args.run, lam, gamma, len(index), len(table), time.perf_counter() - start)
    write_json({"lam": lam, "length_weight": gamma, "tuned": True, "examples": len(index), "n_best": model.cfg.n_best,
                "nbest": model.cfg.nbest, "top_k": model.cfg.top_k, "criterion": "mean of BLEU-1..4 on the valid subset",
                "greedy": reply_stats(references, plain), "grid": table}, tuning_path(args.run, args.seed))
    return lam, gamma


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="seq2seq_history_mmi | seq2seq_history_mmi_antilm")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default="data")
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    params = load_params()
    section = params.get(args.run) or {}
    validate_run(args.run, section)
    p = load_params("generate")
    try:
        cfg = MMIConfig.from_params({**(params.get("mmi") or {}), **(section.get("mmi") or {})})
    except ValueError as e:
        raise InputError("params.yaml", f"{args.run}.mmi: {e}") from None
    ref = section.get("reference", "seq2seq_history")
    helper = f"{ref}_backward" if cfg.mode == "bidi" else f"{ref}_lm"
    paths = [run_dirs(r, args.seed)[0] / "best.pt" for r in (ref, helper)]
    for path in paths:
        if not path.exists():
            raise InputError(path, "no trained model (run its train stage first)")
    device = torch.device("cuda" if p.get("device", "auto") in ("auto", "cuda") and torch.cuda.is_available()
                          else "cpu")
    data_dir = Path(args.data)
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    forward, other = (load_trained(path, vocab, device) for path in paths)
    dataset = load_split(args.split, vocab, type(forward).data_config(forward.params), data_dir)
    model = (Bidi(forward, other, cfg, max_len=p["max_len"]) if cfg.mode == "bidi"
             else AntiLM(forward, other, cfg.lam, cfg.threshold, cfg.length_weight))
    if cfg.mode == "bidi" and cfg.tune:
        with autocast(device, p.get("precision", "auto")):
            cfg.lam, cfg.length_weight = tune_on_valid(model, vocab, data_dir, p, device, args)
    else:
        write_json({"lam": cfg.lam, "length_weight": cfg.length_weight, "tuned": False, "n_best": cfg.n_best},
                   tuning_path(args.run, args.seed))
    method = "greedy" if cfg.mode == "bidi" else p["method"]  # bidi: greedy replays the reranked choice
    with autocast(device, p.get("precision", "auto")):
        rows = generate_rows(model, dataset, method=method, beam_size=p["beam_size"], max_len=p["max_len"],
                             length_penalty=p.get("length_penalty", 0.0), batch_size=p["batch_size"], device=device)
        partner = derangement(len(dataset), p.get("query_shuffle_seed", QUERY_SHUFFLE_SEED))
        own, shuffled = query_log_probs(forward, dataset, batch_size=p["batch_size"], device=device, partner=partner)
    for row, a, b in zip(rows, own.tolist(), shuffled.tolist(), strict=True):
        row["log_p_own"], row["log_p_shuffled"] = a, b
    log.info("%s: %d %s generations (MMI-%s, lambda %.2f, length weight %.2f), %d empty", args.run, len(rows),
             args.split, cfg.mode, cfg.lam, cfg.length_weight, sum(not r["hypothesis"] for r in rows))
    return write_parquet(pa.Table.from_pylist(rows, schema=schema.GENERATIONS), generations_path(args.run, args.seed))


if __name__ == "__main__":
    run_stage(main)
