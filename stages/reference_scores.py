"""Cache the frozen reference's log p_n(r | c) for every group pair:
``python -m stages.reference_scores <model> --seed K`` (dvc stage ``reference_scores@<model>-<K>``).

Reads checkpoints/<model>/seed<K>/best.pt (the MLE-trained reference, run in eval mode and
in the training precision), data/scored_groups/{train,valid}.parquet and the model's inputs;
writes data/reference_scores/<model>/seed<K>/{train,valid}.parquet (schema.REFERENCE_SCORES).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.contrastive.gcl import groups_dir, reference_dir, reference_log_probs
from pipeline.dataset import Vocab, load_split
from pipeline.io import InputError, load_params, read_parquet, run_stage, write_parquet
from pipeline.train import autocast, load_trained, run_dirs

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="the reference run: seq2seq_history | pednet | ... (checkpoints/<run>)")
    parser.add_argument("--seed", type=int, default=1, help="training seed of the reference (checkpoints/<model>/seed<K>)")
    parser.add_argument("--k", type=int, default=None,
                        help="score the wider groups of `select_groups --k K` (data/scored_groups_k<K>) into "
                             "data/reference_scores_k<K>/<model>/seed<K>")
    parser.add_argument("--data", default="data")
    args = parser.parse_args(argv)
    p = load_params("reference_scores")
    data_dir = Path(args.data)
    best = run_dirs(args.model, args.seed)[0] / "best.pt"
    # Scored in the precision the target trains in, so that D = log p - log p_ref has no
    # bf16-vs-fp32 offset.
    precision = load_params("train")["precision"]
    if not best.exists():
        raise InputError(best, "no trained reference model (run the train stage first)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    model = load_trained(best, vocab, device)  # eval mode: no dropout, like the paper's frozen reference
    out = None
    for split in ("train", "valid"):  # valid: the validation contrastive loss (train.criterion cl_nll)
        dataset = load_split(split, vocab, type(model).data_config(model.params), data_dir)
        groups = read_parquet(groups_dir(data_dir, args.k) / f"{split}.parquet")
        with autocast(device, precision):
            table = reference_log_probs(model, dataset, groups, p["batch_size"], device)
        pos = np.concatenate([np.asarray(x) for x in table.column("positive_log_probs").to_pylist()])
        log.info("%s reference, %s: %d pairs, mean log p of the original pairs %.3f", args.model, split,
                 len(pos) + sum(len(x) for x in table.column("negative_log_probs").to_pylist()),
                 float(np.mean([x[0] for x in table.column("positive_log_probs").to_pylist()])))
        out = write_parquet(table, reference_dir(data_dir, args.model, args.seed, args.k) / f"{split}.parquet")
    return out


if __name__ == "__main__":
    run_stage(main)
