"""Train one generator: ``python -m stages.train <run> --seed K`` (dvc stage
``train@<run>-<K>``, one per training seed of params ``seeds``).

A run is a params section: `seq2seq`, `gpmn`, `postks`, `pednet`, or one that names its
architecture with a `model` key (`seq2seq_history`: Seq2Seq reading the multi-turn history,
the GCL paper's setting). Reads params `train`, `model` and `<run>` (whose keys override the
backbone's; its `train` overrides the loop's); writes checkpoints/<run>/seed<K>/{best,last}.pt,
dvclive/<run>/seed<K>/ curves and reports/training/<run>/seed<K>.json (how it stopped).
Rerunning after an interruption resumes from last.pt.

Not byte-identical across thread counts or CPUs (nor between bf16 and fp32): float sums in
training depend on how they are split; equal within seed noise (tests/test_determinism.py;
README "Determinism").
"""

from __future__ import annotations

import argparse

from pipeline.io import load_params, run_stage
from pipeline.models import run_architecture
from pipeline.params_schema import validate_run
from pipeline.train import train


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", help="seq2seq | gpmn | postks | pednet | seq2seq_history | ...")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: params train.seed)")
    parser.add_argument("--data", default="data", help="directory of the preprocessing outputs")
    args = parser.parse_args(argv)
    params = load_params()
    validate_run(args.run, params.get(args.run))  # a run section params_schema.RUNS does not list
    return train(run_architecture(params, args.run), params, run_name=args.run, data_dir=args.data, seed=args.seed)


if __name__ == "__main__":
    run_stage(main)
