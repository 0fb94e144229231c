"""Train a generator with group-wise contrastive learning:
``python -m stages.train_gcl <reference> --seed K`` (dvc stage ``train_gcl@<reference>-<K>``,
run ``<reference>_gcl``: seq2seq_history_gcl, pednet_gcl). Seed K's target starts from, and
is scored against, seed K of its MLE reference run, and reads the data as it does (e.g.
seq2seq_history's multi-turn context).

The one training loop (pipeline/train.py) with the GCL objective (pipeline/contrastive/gcl.py). Reads
params `train`, `model`, `<reference>`, `gcl` and `<reference>_gcl` (its `train` overrides),
data/scored_groups, data/reference_scores/<reference>/seed<K> (for a variant whose gcl.k exceeds
params gcl.k: data/scored_groups_k<k>, data/reference_scores_k<k>/...) and checkpoints/<reference>/seed<K>/best.pt
(the frozen MLE reference, whose weights also initialise the target when gcl.init=reference);
writes checkpoints/<reference>_gcl/seed<K>/{best,last}.pt and dvclive/<reference>_gcl/seed<K>/.

Not byte-identical across thread counts or CPUs: the fine-tune's float sums depend on how
they are split; equal within seed noise (tests/test_determinism.py; README "Determinism").
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.contrastive.gcl import GCLConfig, GroupContrastive, groups_dir, reference_dir
from pipeline.dataset import Vocab, load_split
from pipeline.io import InputError, load_params, read_parquet, run_stage
from pipeline.models import get_model_class, run_architecture, run_model_params
from pipeline.params_schema import validate_run
from pipeline.train import run_dirs, train

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("reference", help="the MLE reference run: seq2seq_history | pednet (the run is <reference>_gcl)")
    p.add_argument("--seed", type=int, default=1, help="training seed (and the reference's)")
    p.add_argument("--run", default=None,
                   help="a variant's params section (default <reference>_gcl): its `gcl` and `train` keys "
                        "override those of <reference>_gcl, e.g. an ablation of GCL Table 5")
    p.add_argument("--data", default="data")
    return p


@dataclass
class Setup:
    model: str              # the architecture
    run: str
    all_params: dict        # with the run's merged section
    objective: GroupContrastive
    reference: Path         # the reference's best.pt
    cfg: GCLConfig
    extra: dict             # what the training fingerprint adds


def setup(args: argparse.Namespace) -> Setup:
    """The run's merged params and its objective (with the valid groups), as training uses them."""
    all_params = load_params()
    ref_run = args.reference
    data_dir, base, model = Path(args.data), f"{ref_run}_gcl", run_architecture(all_params, ref_run)
    run = args.run or base
    if run != base and run not in all_params:
        raise InputError("params.yaml", f"{run}: no such section (a GCL variant names its gcl/train overrides)")
    for name in dict.fromkeys((ref_run, base, run)):  # sections params_schema.RUNS may not list
        validate_run(name, all_params.get(name))
    # The target is its reference, fine-tuned: it reads the data as the reference run does
    # (e.g. seq2seq_history's multi-turn context); then <reference>_gcl's keys, then the variant's.
    ref_section = {k: v for k, v in (all_params.get(ref_run) or {}).items() if k not in ("train", "model")}
    layers = [all_params.get(base) or {}, *([all_params.get(run) or {}] if run != base else [])]
    merged = {**(ref_section if ref_run != model else {})}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k not in ("train", "gcl")})
    for key in ("train", "gcl"):
        merged[key] = {k: v for layer in layers for k, v in (layer.get(key) or {}).items()}
    all_params = {**all_params, run: merged}
    try:
        cfg = GCLConfig.from_params({**(all_params.get("gcl") or {}), **merged["gcl"]})
    except ValueError as e:
        raise InputError("params.yaml", f"{run}.gcl: {e}") from None
    reference = run_dirs(ref_run, args.seed)[0] / "best.pt"
    splits = ("train", "valid")
    # A group size above the DAG's (GCL Figure 3's k = 4, 5) reads its own wider selection.
    wide = cfg.k if cfg.k > (all_params.get("gcl") or {}).get("k", cfg.k) else None
    groups_paths = {s: groups_dir(data_dir, wide) / f"{s}.parquet" for s in splits}
    scores_paths = {s: reference_dir(data_dir, ref_run, args.seed, wide) / f"{s}.parquet" for s in splits}
    for path in (reference, *groups_paths.values(), *scores_paths.values()):
        if not path.exists():
            how = "train, select_groups and reference_scores" if wide is None else \
                f"train, then select_groups --k {wide} and reference_scores {ref_run} --seed {args.seed} --k {wide}"
            raise InputError(path, f"missing (run {how} first)")

    # The objective's copies of the splits, built exactly as the loop builds its own.
    mparams = run_model_params(all_params, run, model)
    vocab = Vocab.load(data_dir / "prepared" / "vocab.parquet")
    data_cfg = get_model_class(model).data_config(mparams)
    train_ds, valid_ds = (load_split(s, vocab, data_cfg, data_dir) for s in splits)
    objective = GroupContrastive(cfg, read_parquet(groups_paths["train"]), read_parquet(scores_paths["train"]),
                                 train_ds, where=str(scores_paths["train"]),
                                 valid=(read_parquet(groups_paths["valid"]), read_parquet(scores_paths["valid"]), valid_ds))
    extra = {"gcl": asdict(cfg), "reference": ref_run,
             **{f"{kind}_{s}": file_digest(paths[s]) for kind, paths in (("groups", groups_paths),
                                                                        ("reference_scores", scores_paths)) for s in splits}}
    return Setup(model, run, all_params, objective, reference, cfg, extra)


def main(argv: list[str] | None = None) -> dict:
    args = parser(__doc__).parse_args(argv)
    s = setup(args)
    return train(s.model, s.all_params, run_name=s.run, data_dir=Path(args.data), objective=s.objective,
                 fingerprint_extra=s.extra, init_from=s.reference if s.cfg.init == "reference" else None,
                 seed=args.seed)


if __name__ == "__main__":
    run_stage(main)
