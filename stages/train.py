"""Train one generator: ``python -m stages.train <model>`` (dvc stage ``train@<model>``).

Reads params `train`, `model` and `<model>`; writes checkpoints/<model>/{best,last}.pt and
dvclive/<model>/ curves. Rerunning after an interruption resumes from last.pt.
"""

from __future__ import annotations

import argparse

from pipeline.io import load_params, run_stage
from pipeline.train import train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="seq2seq | gpmn | postks | pednet")
    parser.add_argument("--data", default="data", help="directory of the preprocessing outputs")
    args = parser.parse_args(argv)
    return train(args.model, load_params(), data_dir=args.data)


if __name__ == "__main__":
    run_stage(main)
