"""Train a generator with group-wise contrastive learning:
``python -m stages.train_gcl <model> --seed K`` (dvc stage ``train_gcl@<model>-<K>``, run
``<model>_gcl``; seed K's target starts from, and is scored against, seed K's reference).

The one training loop (pipeline/train.py) with the GCL objective (pipeline/gcl.py). Reads
params `train`, `model`, `<model>`, `gcl` and `<model>_gcl` (its `train` overrides),
data/scored_groups, data/reference_scores/<model>/seed<K> and checkpoints/<model>/seed<K>/best.pt
(the frozen MLE reference, whose weights also initialise the target when gcl.init=reference);
writes checkpoints/<model>_gcl/seed<K>/{best,last}.pt and dvclive/<model>_gcl/seed<K>/.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import asdict
from pathlib import Path

from pipeline.dataset import Vocab, load_split
from pipeline.gcl import GCLConfig, GroupContrastive
from pipeline.io import InputError, load_params, read_parquet, run_stage
from pipeline.models import get_model_class, model_params
from pipeline.train import run_dirs, train

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="seq2seq | pednet (the architecture; the reference is checkpoints/<model>)")
    parser.add_argument("--seed", type=int, default=1, help="training seed (and the reference's)")
    parser.add_argument("--data", default="data")
    args = parser.parse_args(argv)
    all_params = load_params()
    cfg = GCLConfig.from_params(all_params.get("gcl") or {})
    data_dir, run = Path(args.data), f"{args.model}_gcl"
    reference = run_dirs(args.model, args.seed)[0] / "best.pt"
    groups_path = data_dir / "scored_groups" / "train.parquet"
    scores_path = data_dir / "reference_scores" / args.model / f"seed{args.seed}" / "train.parquet"
    for path in (reference, groups_path, scores_path):
        if not path.exists():
            raise InputError(path, "missing (run train, select_groups and reference_scores first)")

    # The objective's copy of the training split, built exactly as the loop builds its own.
    mparams = model_params(all_params, args.model)
    mparams.update({k: v for k, v in (all_params.get(run) or {}).items() if k in mparams})
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    dataset = load_split("train", vocab, get_model_class(args.model).data_config(mparams), data_dir)
    objective = GroupContrastive(cfg, read_parquet(groups_path), read_parquet(scores_path), dataset,
                                 where=str(scores_path))
    extra = {"gcl": asdict(cfg), "groups": file_digest(groups_path), "reference_scores": file_digest(scores_path)}
    return train(args.model, all_params, run_name=run, data_dir=data_dir, objective=objective,
                 fingerprint_extra=extra, init_from=reference if cfg.init == "reference" else None, seed=args.seed)


if __name__ == "__main__":
    run_stage(main)
