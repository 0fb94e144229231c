"""Target tokens per second: GCL (cached reference) vs MLE training of the same model.

    PYTHONPATH=. python benchmarks/gcl_throughput.py [--model seq2seq] [--rounds 4] [--steps 8]

Needs checkpoints/<model>/best.pt, data/scored_groups and data/reference_scores/<model>.
Both objectives train a copy of the reference with Adam on the same training examples;
MLE and GCL blocks alternate so that load from other processes hits both alike. Target
tokens = response tokens (with </s>) that go through the target model: for MLE the
batch's, for GCL every pair of every group (2k + 1 + 2k pairs per example).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.dataset import Vocab, batch_indices, load_split
from pipeline.gcl import GCLConfig, GroupContrastive
from pipeline.io import load_params, read_parquet
from pipeline.train import load_trained, mle


def run_steps(model, objective, dataset, batches, clip=5.0) -> tuple[int, float]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    tokens, start = 0, time.perf_counter()
    for index in batches:
        batch = dataset.collate(index)
        out = objective(model, batch, epoch=0, step=0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        tokens += int(out.get("target_tokens", batch.response_mask.sum()))
    return tokens, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="seq2seq")
    ap.add_argument("--gcl-batch", type=int, default=16, help="training examples per GCL step")
    ap.add_argument("--mle-batch", type=int, nargs="+", default=[64, 208], help="MLE batch sizes to compare")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--data", default="data")
    args = ap.parse_args()
    data = Path(args.data)
    vocab = Vocab.load(data / "prepared" / "vocab.parquet")
    reference = Path("checkpoints") / args.model / "best.pt"
    model = load_trained(reference, vocab).train()
    dataset = load_split("train", vocab, type(model).data_config(model.params), data)
    cfg = GCLConfig.from_params(load_params("gcl"))
    gcl = GroupContrastive(cfg, read_parquet(data / "scored_groups" / "train.parquet"),
                           read_parquet(data / "reference_scores" / args.model / "train.parquet"), dataset)
    g = torch.Generator().manual_seed(0)
    lengths = dataset.lengths()
    rates: dict[str, list[float]] = {"gcl": [], **{f"mle_{b}": [] for b in args.mle_batch}}
    pairs_per_step = []
    for r in range(args.rounds):
        for name in rates:
            bs = args.gcl_batch if name == "gcl" else int(name.split("_")[1])
            batches = batch_indices(lengths, bs, g)[: args.steps + 1]
            run_steps(model, gcl if name == "gcl" else mle, dataset, batches[:1])  # warm-up
            tokens, seconds = run_steps(model, gcl if name == "gcl" else mle, dataset, batches[1:])
            rates[name].append(tokens / seconds)
            if name == "gcl":
                pairs_per_step.append(sum(len(gcl.step_pairs(b, 0)[0]) for b in batches[1:]) / args.steps)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.0f} tok/s" for k, v in rates.items()), flush=True)
    med = {k: float(np.median(v)) for k, v in rates.items()}
    result = {"model": args.model, "threads": torch.get_num_threads(), "gcl_batch_examples": args.gcl_batch,
              "gcl_pairs_per_step": float(np.mean(pairs_per_step)), "median_tokens_per_s": med,
              **{f"ratio_gcl_vs_{k}": med["gcl"] / v for k, v in med.items() if k != "gcl"}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
