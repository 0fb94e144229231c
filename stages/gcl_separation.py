"""Why a GCL run kept (or left) step 0: ``python -m stages.gcl_separation <reference> --seed K [--run R]``.

For the run's selected checkpoint (best.pt) and its final step (last.pt), how the target's
D = log p_m(r | c) − log p_n(r | c) separates the valid group's positives from its negatives
(GroupContrastive.separation: ROC AUC of D, per kind and side the mean and sd of D and the
share with D > 0, and the valid CL). Eq. 4 is convex in D: a fine-tune whose D spreads more
than it separates raises the valid CL, and the selection (CL + 0.5 NLL) keeps step 0.

Same arguments as stages.train_gcl; reads what it reads plus checkpoints/<run>/seed<K>/;
writes reports/probes/gcl_separation/<run>/seed<K>.json. Not a dvc stage: a diagnostic.
"""

from __future__ import annotations

import torch

from pipeline.dataset import Vocab
from pipeline.io import InputError, run_stage, write_json
from pipeline.train import load_checkpoint, load_trained, run_dirs, train_params
from stages.train_gcl import parser, setup


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    s = setup(args)
    ck_dir = run_dirs(s.run, args.seed)[0]
    vocab = Vocab.load(f"{args.data}/prepared/vocab.parquet")
    precision = train_params(s.all_params, s.run).get("precision", "auto")  # as validation ran in training
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {"run": s.run, "seed": args.seed, "precision": precision}
    for name in ("best", "last"):
        path = ck_dir / f"{name}.pt"
        if not path.exists():
            raise InputError(path, f"missing (train it first: python -m stages.train_gcl {args.reference} "
                                   f"--seed {args.seed}{' --run ' + s.run if args.run else ''})")
        ck = load_checkpoint(path)
        step = ck["step"] if "step" in ck else ck.get("progress", {}).get("step")  # best.pt | last.pt
        out[name] = {"step": step, **s.objective.separation(load_trained(path, vocab, device), device, precision)}
    write_json(out, f"reports/probes/gcl_separation/{s.run}/seed{args.seed}.json")
    return out


if __name__ == "__main__":
    run_stage(main)
