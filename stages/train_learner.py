"""Fine-tune the MLE Seq2Seq with one of GCL Table 3's learning objectives:
``python -m stages.train_learner <reference> <learner> --seed K`` (dvc stage
``train_learner@<learner>-<K>``, run ``<reference>_<learner>``: seq2seq_history_deeprl,
seq2seq_history_adversarial).

The one training loop (pipeline/train.py) with the learner's objective, starting from seed
K of the reference run (checkpoints/<reference>/seed<K>/best.pt), reading the data as the
reference does (as stages/train_gcl.py):

- ``deeprl`` (pipeline/learners/rl.py): policy gradient with Li et al. 2016b's rewards, scored by the
  frozen reference and the backward Seq2Seq checkpoints/<reference>_backward/seed<K>/best.pt;
- ``adversarial`` (pipeline/learners/adversarial.py): REINFORCE against a discriminator trained in the
  objective, plus teacher forcing.

Reads params `train`, `model`, `<reference>`, `<learner>` and `<reference>_<learner>` (its
`train` and `<learner>` keys override); writes checkpoints/<reference>_<learner>/seed<K>/.

Not byte-identical across thread counts or CPUs: the same training loop as train and train_gcl
(not measured separately); equal within seed noise (README "Determinism").
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline.dataset import Vocab, load_split
from pipeline.io import InputError, load_params, run_stage
from pipeline.learners.adversarial import Adversarial, AdversarialConfig
from pipeline.learners.rl import DeepRL, DeepRLConfig
from pipeline.models import get_model_class, run_architecture, run_model_params
from pipeline.params_schema import validate_run
from pipeline.train import load_trained, run_dirs, train, train_params
from stages.train_gcl import file_digest

LEARNERS = ("deeprl", "adversarial")


def merged_run(all_params: dict, reference: str, run: str, objective_key: str) -> dict:
    """The run's section as the loop reads it: the reference's data and backbone keys, then
    the run's own (its `train` and objective keys kept apart)."""
    own = all_params.get(run) or {}
    ref = {k: v for k, v in (all_params.get(reference) or {}).items() if k not in ("train", "model")}
    keep = {k: v for k, v in own.items() if k not in ("train", objective_key)}
    return {**ref, **keep, "train": own.get("train") or {}, objective_key: own.get(objective_key) or {}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("reference", help="the MLE run the learner starts from: seq2seq_history")
    parser.add_argument("learner", choices=LEARNERS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", default="data")
    args = parser.parse_args(argv)
    all_params = load_params()
    ref, learner = args.reference, args.learner
    run, model = f"{ref}_{learner}", run_architecture(all_params, ref)
    for name in (ref, run):
        validate_run(name, all_params.get(name))
    section = merged_run(all_params, ref, run, learner)
    all_params = {**all_params, run: section}
    data_dir = Path(args.data)
    reference = run_dirs(ref, args.seed)[0] / "best.pt"
    backward = run_dirs(f"{ref}_backward", args.seed)[0] / "best.pt"
    needed = (reference, backward) if learner == "deeprl" else (reference,)
    for path in needed:
        if not path.exists():
            raise InputError(path, "missing (train the reference run, and for deeprl its backward model, first)")
    cfg_params = {**(all_params.get(learner) or {}), **section[learner]}
    try:
        cfg = (DeepRLConfig if learner == "deeprl" else AdversarialConfig).from_params(cfg_params)
    except ValueError as e:
        raise InputError("params.yaml", f"{run}.{learner}: {e}") from None
    device_pref = train_params(all_params, run).get("device", "auto")
    device = torch.device("cuda" if device_pref in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    scorer = load_trained(reference, vocab, device)
    extra = {learner: asdict(cfg), "reference": ref}
    if learner == "deeprl":
        mparams = run_model_params(all_params, run, model)
        valid = load_split("valid", vocab, get_model_class(model).data_config(mparams), data_dir)
        objective = DeepRL(cfg, scorer, load_trained(backward, vocab, device), vocab, valid=valid)
        extra["backward"] = file_digest(backward)
    else:
        torch.manual_seed(cfg.seed)  # the discriminator's initial weights
        objective = Adversarial(cfg, scorer)
    return train(model, all_params, run_name=run, data_dir=data_dir, objective=objective, fingerprint_extra=extra,
                 init_from=reference, seed=args.seed)


if __name__ == "__main__":
    run_stage(main)
