"""Train one generator: ``python -m stages.train <model> --seed K`` (dvc stage
``train@<model>-<K>``, one per training seed of params ``seeds``).

Reads params `train`, `model` and `<model>`; writes checkpoints/<model>/seed<K>/{best,last}.pt,
dvclive/<model>/seed<K>/ curves and reports/training/<model>/seed<K>.json (how it stopped).
Rerunning after an interruption resumes from last.pt.
"""

from __future__ import annotations

import argparse

from pipeline.io import load_params, run_stage
from pipeline.train import train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="seq2seq | gpmn | postks | pednet")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: params train.seed)")
    parser.add_argument("--data", default="data", help="directory of the preprocessing outputs")
    args = parser.parse_args(argv)
    return train(args.model, load_params(), data_dir=args.data, seed=args.seed)


if __name__ == "__main__":
    run_stage(main)
